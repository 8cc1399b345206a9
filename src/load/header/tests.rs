use super::*;
use std::time::Instant;

/// A hand-written two-stencil header in the 3.13 shape (not CPython's text).
pub(crate) const FIXTURE: &str = r#"// fixture: made up for stencilcheck's loader tests
// $ written by hand

void
emit__FIX_ADD(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])
{
    // 
    // fix_add.o:   file format elf64-x86-64
    // 
    // Disassembly of section .text:
    // 
    // 0000000000000000 <_JIT_ENTRY>:
    // 0: 48 8b 05 00 00 00 00          movq    (%rip), %rax            # 0x7 <_JIT_ENTRY+0x7>
    // 0000000000000003:  R_X86_64_REX_GOTPCRELX       _JIT_OPARG-0x4
    // 7: 48 01 c3                      addq    %rax, %rbx
    // a: ff 15 00 00 00 00             callq   *(%rip)                 # 0x10 <_JIT_ENTRY+0x10>
    // 000000000000000c:  R_X86_64_GOTPCRELX   PyFix_Helper-0x4
    // 10: 48 85 c0                      testq   %rax, %rax
    // 13: 0f 84 00 00 00 00             je      0x19 <_JIT_ENTRY+0x19>
    // 0000000000000015:  R_X86_64_PC32        _JIT_ERROR_TARGET-0x4
    // 19: 48 8d 05 00 00 00 00          leaq    (%rip), %rax            # 0x20 <_JIT_ENTRY+0x20>
    // 000000000000001c:  R_X86_64_PC32        .rodata.str1.1+0x2
    // 20: ff 25 00 00 00 00             jmpq    *(%rip)                 # 0x26 <_JIT_ENTRY+0x26>
    // 0000000000000022:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4
    // 26: 
    const unsigned char code_body[38] = {
        0x48, 0x8b, 0x05, 0x00, 0x00, 0x00, 0x00, 0x48,
        0x01, 0xc3, 0xff, 0x15, 0x00, 0x00, 0x00, 0x00,
        0x48, 0x85, 0xc0, 0x0f, 0x84, 0x00, 0x00, 0x00,
        0x00, 0x48, 0x8d, 0x05, 0x00, 0x00, 0x00, 0x00,
        0xff, 0x25, 0x00, 0x00, 0x00, 0x00,
    };
    // 0: 'hi\x00'
    // 3: 00 00 00 00 00
    // 8: OPARG
    // 10: &PyFix_Helper+0x0
    // 18: CONTINUE
    const unsigned char data_body[32] = {
        0x68, 0x69, 0x00,
    };
    memcpy(data, data_body, sizeof(data_body));
    patch_64(data + 0x8, instruction->oparg);
    patch_64(data + 0x10, (uintptr_t)&PyFix_Helper);
    patch_64(data + 0x18, (uintptr_t)code + sizeof(code_body));
    memcpy(code, code_body, sizeof(code_body));
    patch_x86_64_32rx(code + 0x3, (uintptr_t)data + 0x4);
    patch_x86_64_32rx(code + 0xc, (uintptr_t)data + 0xc);
    patch_32r(code + 0x15, instruction_starts[instruction->error_target] + -0x4);
    patch_32r(code + 0x1c, (uintptr_t)data + -0x2);
    patch_x86_64_32rx(code + 0x22, (uintptr_t)data + 0x14);
}

void
emit_trampoline(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])
{
    // 
    // trampoline.o:   file format elf64-x86-64
    // 
    // Disassembly of section .text:
    // 
    // 0000000000000000 <_ENTRY>:
    // 0: 55                            pushq   %rbp
    // 1: ff 25 00 00 00 00             jmpq    *(%rip)                 # 0x7 <_ENTRY+0x7>
    // 0000000000000003:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4
    // 1: 
    const unsigned char code_body[1] = {
        0x55,
    };
    // 0: 
    memcpy(code, code_body, sizeof(code_body));
}

typedef struct { void *emit; size_t code_size; size_t data_size; } StencilGroup;

static const StencilGroup trampoline = {emit_trampoline, 1, 0};

static const StencilGroup stencil_groups[MAX_UOP_ID + 1] = {
    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},
};
"#;

const PATH: &str = "fix/jit_stencils.h";

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).expect("needle in fixture")
}

fn with(from: &str, to: &str) -> String {
    assert!(FIXTURE.contains(from), "fixture lacks `{from}`");
    FIXTURE.replacen(from, to, 1)
}

fn parse_err(text: &str) -> BadInput {
    match parse(PATH, text) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn assert_err_at(text: &str, line: usize, message_part: &str) {
    let e = parse_err(text);
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("{PATH}:{line}: ")), "wrong location: {shown}");
    assert!(shown.contains(message_part), "`{shown}` lacks `{message_part}`");
    assert!(!shown.contains('\n'));
}

fn v(term: Term, addend: i64) -> Value {
    Value::new(term, addend)
}

#[test]
fn load_fixture_field_by_field() {
    let set = parse(PATH, FIXTURE).expect("fixture parses");
    assert_eq!(set.arch(), Arch::X86_64);
    assert_eq!(set.path, PathBuf::from(PATH));
    let names: Vec<&str> = set.stencils.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["_FIX_ADD", "trampoline"]);

    let add = &set.stencils[0];
    assert_eq!(add.line, line_of(FIXTURE, "emit__FIX_ADD("));
    assert_eq!(add.code.len(), 38);
    assert_eq!(&add.code[..3], &[0x48, 0x8b, 0x05]);
    assert_eq!(&add.code[32..], &[0xff, 0x25, 0, 0, 0, 0]);
    assert_eq!(add.data.len(), 32, "zero-extended to the declared length");
    assert_eq!(&add.data[..4], b"hi\0\0");
    assert!(add.data[3..].iter().all(|&b| b == 0));

    // Instructions: offsets, bytes, text without the `# …` comment.
    let offsets: Vec<u64> = add.instructions.iter().map(|i| i.offset).collect();
    assert_eq!(offsets, [0x0, 0x7, 0xa, 0x10, 0x13, 0x19, 0x20]);
    let first = &add.instructions[0];
    assert_eq!(first.bytes, [0x48, 0x8b, 0x05, 0, 0, 0, 0]);
    assert_eq!(first.text, "movq (%rip), %rax");
    assert_eq!(first.line, line_of(FIXTURE, "// 0: 48 8b 05"));
    assert_eq!(add.instructions[4].text, "je 0x19 <_JIT_ENTRY+0x19>");
    assert_eq!(add.instructions[6].text, "jmpq *(%rip)");
    assert_eq!(add.instruction_at(0xd).map(|i| i.offset), Some(0xa));

    // Relocations.
    let r: Vec<(u64, RelocKind, Symbol, i64)> =
        add.relocations.iter().map(|r| (r.offset, r.kind, r.symbol.clone(), r.addend)).collect();
    assert_eq!(
        r,
        [
            (0x3, RelocKind::X86_64_REX_GOTPCRELX, Symbol::Oparg, -4),
            (0xc, RelocKind::X86_64_GOTPCRELX, Symbol::External("PyFix_Helper".into()), -4),
            (0x15, RelocKind::X86_64_PC32, Symbol::ErrorTarget, -4),
            (0x1c, RelocKind::X86_64_PC32, Symbol::Local(".rodata.str1.1".into()), 2),
            (0x22, RelocKind::X86_64_GOTPCRELX, Symbol::Continue, -4),
        ]
    );
    assert_eq!(add.relocations[0].text, "0000000000000003:  R_X86_64_REX_GOTPCRELX       _JIT_OPARG-0x4");
    assert_eq!(add.relocations[3].line, line_of(FIXTURE, ".rodata.str1.1+0x2"));

    // Data comments.
    let d: Vec<(u64, DataCommentKind)> = add.data_comments.iter().map(|c| (c.offset, c.kind.clone())).collect();
    assert_eq!(
        d,
        [
            (0x0, DataCommentKind::Bytes),
            (0x3, DataCommentKind::Bytes),
            (0x8, DataCommentKind::Slot(v(Term::Oparg, 0))),
            (0x10, DataCommentKind::Slot(v(Term::Symbol("PyFix_Helper".into()), 0))),
            (0x18, DataCommentKind::Slot(v(Term::Continue, 0))),
        ]
    );
    assert_eq!(add.rodata_len(), 8);

    // Emit order: data first, then code.
    let l = |needle: &str| line_of(FIXTURE, needle);
    let patch = |func, section, offset, value, needle: &str| {
        EmitOp::Patch(PatchCall { func, section, offset, value, line: l(needle) })
    };
    assert_eq!(
        add.emit,
        [
            EmitOp::CopyData { line: l("memcpy(data") },
            patch(PatchFn::P64, Section::Data, 0x8, v(Term::Oparg, 0), "data + 0x8,"),
            patch(PatchFn::P64, Section::Data, 0x10, v(Term::Symbol("PyFix_Helper".into()), 0), "data + 0x10,"),
            patch(PatchFn::P64, Section::Data, 0x18, v(Term::Continue, 0), "data + 0x18,"),
            EmitOp::CopyCode { line: l("memcpy(code, code_body, sizeof(code_body));") },
            patch(PatchFn::X86_64_32rx, Section::Code, 0x3, v(Term::Data, 4), "code + 0x3,"),
            patch(PatchFn::X86_64_32rx, Section::Code, 0xc, v(Term::Data, 0xc), "code + 0xc,"),
            patch(PatchFn::P32r, Section::Code, 0x15, v(Term::ErrorTarget, -4), "code + 0x15,"),
            patch(PatchFn::P32r, Section::Code, 0x1c, v(Term::Data, -2), "code + 0x1c,"),
            patch(PatchFn::X86_64_32rx, Section::Code, 0x22, v(Term::Data, 0x14), "code + 0x22,"),
        ]
    );

    // The trampoline: its final jump to _JIT_CONTINUE was cut off the code,
    // so that instruction and its relocation are dropped.
    let t = &set.stencils[1];
    assert_eq!(t.line, line_of(FIXTURE, "emit_trampoline("));
    assert_eq!(t.code, [0x55]);
    assert!(t.data.is_empty());
    assert_eq!(t.instructions.len(), 1);
    assert_eq!(t.instructions[0].text, "pushq %rbp");
    assert!(t.relocations.is_empty());
    let after =
        |needle: &str| FIXTURE.lines().enumerate().skip(t.line).find(|(_, l)| l.trim() == needle).map(|(i, _)| i + 1);
    let data_line = after("// 0:").expect("data comment");
    assert_eq!(t.data_comments, [DataComment { offset: 0, kind: DataCommentKind::Bytes, line: data_line }]);
    assert_eq!(t.emit, [EmitOp::CopyCode { line: data_line + 1 }]);
}

#[test]
fn load_error_truncated_mid_function() {
    let cut = line_of(FIXTURE, "patch_64(data + 0x10");
    let text: String = FIXTURE.lines().take(cut).map(|l| format!("{l}\n")).collect();
    assert_err_at(&text, cut, "truncated: emit__FIX_ADD (line 5) ends without `}`");
    // Inside a body initializer.
    let cut = line_of(FIXTURE, "0x01, 0xc3");
    let text: String = FIXTURE.lines().take(cut).map(|l| format!("{l}\n")).collect();
    assert_err_at(&text, cut, "code_body initializer");
    // Inside the comments.
    let cut = line_of(FIXTURE, "// 13: 0f 84");
    let text: String = FIXTURE.lines().take(cut).map(|l| format!("{l}\n")).collect();
    assert_err_at(&text, cut, "truncated");
}

#[test]
fn load_error_missing_closing_brace() {
    // The first function's `}` is lost: the next `void` line is where it fails.
    let text = with(
        "    patch_x86_64_32rx(code + 0x22, (uintptr_t)data + 0x14);\n}\n",
        "    patch_x86_64_32rx(code + 0x22, (uintptr_t)data + 0x14);\n",
    );
    let second_void = text.lines().enumerate().filter(|(_, l)| *l == "void").nth(1).map(|(i, _)| i + 1);
    assert_err_at(&text, second_void.expect("two functions"), "emit__FIX_ADD (line 5) is not closed");
}

#[test]
fn load_error_truncated_before_table() {
    let cut = line_of(FIXTURE, "typedef struct");
    let text: String = FIXTURE.lines().take(cut - 1).map(|l| format!("{l}\n")).collect();
    assert_err_at(&text, cut - 1, "truncated: no stencil table");
    // Table opened but not closed.
    let cut = line_of(FIXTURE, "[_FIX_ADD]");
    let text: String = FIXTURE.lines().take(cut).map(|l| format!("{l}\n")).collect();
    assert_err_at(&text, cut, "not closed");
}

#[test]
fn load_error_unknown_patch_function() {
    let text = with("patch_32r(code + 0x1c", "patch_foo(code + 0x1c");
    assert_err_at(&text, line_of(&text, "patch_foo"), "unknown patch function `patch_foo`");
}

#[test]
fn load_error_garbage_value() {
    for garbage in ["(uintptr_t)data * 2", "instruction->nope", "(uintptr_t)data + (uintptr_t)code", "1 +", "data"] {
        let text = with("(uintptr_t)data + -0x2)", &format!("{garbage})"));
        assert_err_at(&text, line_of(FIXTURE, "code + 0x1c"), &format!("cannot parse patch value `{garbage}`"));
    }
    let text = with("code + 0x1c,", "code + zz,");
    assert_err_at(&text, line_of(FIXTURE, "code + 0x1c"), "cannot parse patch location `code + zz`");
    let text = with("memcpy(data, data_body", "memmove(data, data_body");
    assert_err_at(&text, line_of(FIXTURE, "memcpy(data"), "unexpected statement");
}

#[test]
fn load_error_unknown_relocation_type() {
    let text = with("R_X86_64_PC32        .rodata", "R_X86_64_BOGUS       .rodata");
    assert_err_at(&text, line_of(FIXTURE, ".rodata.str1.1+0x2"), "unknown relocation type `R_X86_64_BOGUS`");
}

#[test]
fn load_error_body_longer_than_declared() {
    let text = with("data_body[32]", "data_body[2]");
    assert_err_at(&text, line_of(FIXTURE, "data_body[32]"), "data_body[2] lists more than 2 bytes");
    let text = with("0x68, 0x69, 0x00,", "0x68, 0x169, 0x00,");
    assert_err_at(&text, line_of(FIXTURE, "0x68, 0x69"), "bad byte `0x169`");
}

#[test]
fn load_error_table_mismatches() {
    let text = with("{emit__FIX_ADD, 38, 32}", "{emit__FIX_ADD, 38, 40}");
    assert_err_at(&text, line_of(FIXTURE, "[_FIX_ADD]"), "data_size 40");
    let text = with("    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n", "");
    assert_err_at(
        &text,
        line_of(FIXTURE, "stencil_groups["),
        "emit__FIX_ADD (line 5) is missing from the stencil table",
    );
    let text = with(
        "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n",
        "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n    [_GONE] = {emit__GONE, 1, 0},\n",
    );
    assert_err_at(&text, line_of(FIXTURE, "[_FIX_ADD]") + 1, "no such function");
    let text = with("[_FIX_ADD] = {emit__FIX_ADD,", "[_FIX_SUB] = {emit__FIX_ADD,");
    assert_err_at(&text, line_of(FIXTURE, "[_FIX_ADD]"), "points at emit__FIX_ADD");
}

#[test]
fn load_error_relocation_outside_code() {
    let text = with("0000000000000022:  R_X86_64_GOTPCRELX", "0000000000000024:  R_X86_64_GOTPCRELX");
    assert_err_at(&text, line_of(FIXTURE, "0000000000000022:"), "lies outside code_body");
    // The trampoline's dropped jump must name _JIT_CONTINUE.
    let text = FIXTURE.replace(
        "0000000000000003:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4\n    // 1: ",
        "0000000000000003:  R_X86_64_GOTPCRELX   _JIT_TOP-0x4\n    // 1: ",
    );
    assert_ne!(text, FIXTURE);
    assert_err_at(&text, line_of(FIXTURE, "// 1: ff 25"), "instruction at 0x1 lies outside code_body");
    // The end line must agree with the declared size.
    let text = with("    // 26: \n", "    // 25: \n");
    assert_err_at(&text, line_of(FIXTURE, "// 26: "), "ends at 0x25");
    // Data slots must fit in data_body.
    let text = with("// 18: CONTINUE", "// 1c: CONTINUE");
    assert_err_at(&text, line_of(FIXTURE, "// 18: CONTINUE"), "outside data_body");
}

#[test]
fn load_error_bad_comments() {
    let text = with("// 18: CONTINUE", "// 18: GOT+0x8");
    assert_err_at(&text, line_of(FIXTURE, "// 18: CONTINUE"), "cannot parse data slot `GOT+0x8`");
    let text = with("// 10: 48 85 c0                      testq   %rax, %rax", "// 10: 48 85 c1 4f");
    assert_err_at(&text, line_of(FIXTURE, "// 10: 48 85 c0"), "wrapped objdump output");
    let text = with("// Disassembly of section .text:", "// something else");
    assert_err_at(&text, line_of(FIXTURE, "// Disassembly of section .text:"), "unrecognized disassembly line");
}

#[test]
fn load_error_duplicate_and_names() {
    let text = with("emit_trampoline(", "emit__FIX_ADD(");
    assert_err_at(&text, line_of(FIXTURE, "emit_trampoline("), "defined twice");
    let text = with("emit_trampoline(", "emit_tram-poline(");
    assert_err_at(&text, line_of(FIXTURE, "emit_trampoline("), "bad emit function name");
}

/// Truncating the fixture anywhere (every line, every character) gives a
/// result or an error, never a panic; only the complete text parses.
#[test]
fn load_every_prefix_parses_or_errs() {
    let lines: Vec<&str> = FIXTURE.lines().collect();
    for n in 0..=lines.len() {
        let text: String = lines[..n].iter().map(|l| format!("{l}\n")).collect();
        let result = std::panic::catch_unwind(|| parse(PATH, &text));
        let result = result.unwrap_or_else(|_| panic!("panicked on the first {n} lines"));
        if let Err(e) = &result {
            let line: usize = e.location.rsplit(':').next().and_then(|l| l.parse().ok()).expect("file:line");
            assert!(line >= 1 && line <= n.max(1), "line {line} out of range for {n} lines: {e}");
        }
        // The table's closing line is the last one: every shorter prefix fails.
        assert_eq!(result.is_ok(), n == lines.len(), "prefix of {n} lines");
    }
    for (cut, _) in FIXTURE.char_indices() {
        let text = &FIXTURE[..cut];
        let result = std::panic::catch_unwind(|| parse(PATH, text));
        assert!(result.is_ok(), "panicked at byte {cut}");
    }
}

/// Random line edits (drop, duplicate, swap, mangle) never panic either.
#[test]
fn load_mutations_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let lines: Vec<&str> = FIXTURE.lines().collect();
    for _ in 0..2000 {
        let mut m: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..m.len());
            match rng.gen_range(0..5) {
                0 => {
                    m.remove(i);
                }
                1 => {
                    let l = m[i].clone();
                    m.insert(i, l);
                }
                2 => {
                    let j = rng.gen_range(0..m.len());
                    m.swap(i, j);
                }
                3 => {
                    let l = &mut m[i];
                    if !l.is_empty() {
                        let k = rng.gen_range(0..l.len());
                        if l.is_char_boundary(k) {
                            l.truncate(k);
                        }
                    }
                }
                _ => {
                    let chars = ['}', '{', ';', ',', '0', 'x', '(', ')', '-', '+', ':', ' ', 'f'];
                    let l = &mut m[i];
                    let k = rng.gen_range(0..=l.len());
                    if l.is_char_boundary(k) {
                        l.insert(k, chars[rng.gen_range(0..chars.len())]);
                    }
                }
            }
            if m.is_empty() {
                break;
            }
        }
        let text = m.join("\n");
        let r = std::panic::catch_unwind(|| parse(PATH, &text));
        assert!(r.is_ok(), "panicked on:\n{text}");
    }
}

#[test]
fn load_patch_value_forms() {
    let cases: &[(&str, Value)] = &[
        ("(uintptr_t)data + 0x4", v(Term::Data, 4)),
        ("(uintptr_t)data + -0x4", v(Term::Data, -4)),
        ("(uintptr_t)data", v(Term::Data, 0)),
        ("(uintptr_t)code", v(Term::Code, 0)),
        ("(uintptr_t)code + 0x10", v(Term::Code, 0x10)),
        ("(uintptr_t)code + sizeof(code_body)", v(Term::Continue, 0)),
        ("(uintptr_t)code + sizeof(code_body) + 0x8", v(Term::Continue, 8)),
        ("(uintptr_t)&_PyEval_BinaryOps", v(Term::Symbol("_PyEval_BinaryOps".into()), 0)),
        ("(uintptr_t)&PyLong_Type + 0x8", v(Term::Symbol("PyLong_Type".into()), 8)),
        ("(uintptr_t)executor", v(Term::Executor, 0)),
        ("instruction_starts[instruction->jump_target]", v(Term::JumpTarget, 0)),
        ("instruction_starts[instruction->error_target]", v(Term::ErrorTarget, 0)),
        ("instruction_starts[1]", v(Term::Top, 0)),
        ("state->instruction_starts[instruction->jump_target]", v(Term::JumpTarget, 0)),
        ("state->instruction_starts[instruction->error_target] + -0x4", v(Term::ErrorTarget, -4)),
        ("state->instruction_starts[1]", v(Term::Top, 0)),
        ("instruction->oparg", v(Term::Oparg, 0)),
        ("instruction->operand", v(Term::Operand(0), 0)),
        ("instruction->operand0", v(Term::Operand(0), 0)),
        ("instruction->operand1", v(Term::Operand(1), 0)),
        ("instruction->target", v(Term::Target, 0)),
        ("instruction->exit_index", v(Term::ExitIndex, 0)),
        ("0x10", v(Term::Zero, 0x10)),
        ("16", v(Term::Zero, 16)),
        ("-0x4", v(Term::Zero, -4)),
        ("0xfffffffffffffffc", v(Term::Zero, -4)),
        // 3.14+: the trace GOT slot of an ordinal, as CPython writes it on
        // aarch64 and (minus 4) on x86-64.
        ("got_symbol_address(0x2, state)", v(Term::GotSymbol(2), 0)),
        ("got_symbol_address(0x0, state) - 4", v(Term::GotSymbol(0), -4)),
        ("got_symbol_address(0x1f, state) + -0x4", v(Term::GotSymbol(0x1f), -4)),
        ("instruction->operand1 + 0x78", v(Term::Operand(1), 0x78)),
        // 32-bit targets: the operand's halves.
        ("(instruction->operand & UINT32_MAX)", v(Term::OperandLo(0), 0)),
        ("(instruction->operand & UINT32_MAX) + 0x12", v(Term::OperandLo(0), 0x12)),
        ("(instruction->operand1 >> 32)", v(Term::OperandHi(1), 0)),
        ("(uintptr_t)data - 0x8", v(Term::Data, -8)),
    ];
    // An empty argument is no value at all (`patch_64(code, )`).
    assert_eq!(lex("").and_then(|t| value_of(&t)), None);
    for (text, want) in cases {
        let got = lex(text).and_then(|t| value_of(&t));
        assert_eq!(got.as_ref(), Some(want), "`{text}`");
        // Display (model.rs) round-trips through the parser.
        if !text.is_empty() {
            let shown = want.to_string();
            assert_eq!(lex(&shown).and_then(|t| value_of(&t)).as_ref(), Some(want), "`{shown}`");
        }
    }
    for bad in [
        "(uintptr_t)data +",
        "+ 0x4",
        "sizeof(code_body)",
        "(uintptr_t)data + sizeof(code_body)",
        "(uintptr_t)code + sizeof(code_body) + sizeof(code_body)",
        "instruction_starts[2]",
        "instruction_starts[instruction->oparg]",
        "(instruction->operand >> 16)",
        "(instruction->oparg & UINT32_MAX)",
        "instruction->operand & UINT32_MAX",
        "instruction->oparg + instruction->target",
        "(uintptr_t)&",
        "(int)data",
        "0x",
        "0x1g",
        "got_symbol_address(0x1)",
        "got_symbol_address(0x1, code)",
        "got_symbol_address(0x100000000, state)",
        "got_symbol_address(0x1, state) - instruction->oparg",
        "(uintptr_t)data - ",
    ] {
        assert_eq!(lex(bad).and_then(|t| value_of(&t)), None, "`{bad}` should not parse");
    }
    assert_eq!(location_of("code"), Some((Section::Code, 0)));
    assert_eq!(location_of(" data + 0x18 "), Some((Section::Data, 0x18)));
    assert_eq!(location_of("code + 12"), Some((Section::Code, 12)));
    assert_eq!(location_of("code - 4"), None);
    assert_eq!(location_of("stack + 4"), None);
}

#[test]
fn load_data_slot_forms() {
    let cases: &[(&str, Value)] = &[
        ("CONTINUE", v(Term::Continue, 0)),
        ("ERROR_TARGET", v(Term::ErrorTarget, 0)),
        ("JUMP_TARGET", v(Term::JumpTarget, 0)),
        ("OPARG", v(Term::Oparg, 0)),
        ("OPERAND", v(Term::Operand(0), 0)),
        ("OPERAND0", v(Term::Operand(0), 0)),
        ("OPERAND1", v(Term::Operand(1), 0)),
        ("EXECUTOR", v(Term::Executor, 0)),
        ("TOP", v(Term::Top, 0)),
        ("TARGET", v(Term::Target, 0)),
        ("EXIT_INDEX", v(Term::ExitIndex, 0)),
        ("&_PyEval_BinaryOps+0x0", v(Term::Symbol("_PyEval_BinaryOps".into()), 0)),
        ("&PyLong_Type+0x10", v(Term::Symbol("PyLong_Type".into()), 0x10)),
        ("&.rodata.str1.1-0x4", v(Term::Symbol(".rodata.str1.1".into()), -4)),
        ("DATA+0x20", v(Term::Data, 0x20)),
        ("CODE+-0x4", v(Term::Code, -4)),
        ("0x8", v(Term::Zero, 8)),
        ("-0x8", v(Term::Zero, -8)),
    ];
    for (text, want) in cases {
        assert_eq!(slot_value(text).as_ref(), Some(want), "`{text}`");
    }
    for bad in ["GOT", "OPERAND_HI", "CONTINUE+&foo+0x0", "&", "&a b", "CONTINUE-0x4", "continue", "DATA+"] {
        assert_eq!(slot_value(bad), None, "`{bad}` should not parse");
    }
}

#[test]
fn load_small_helpers() {
    assert_eq!(split_addend("_JIT_OPARG-0x4"), ("_JIT_OPARG", -4));
    assert_eq!(split_addend(".rodata.str1.1+0x1b"), (".rodata.str1.1", 0x1b));
    assert_eq!(split_addend("_Py_Dealloc"), ("_Py_Dealloc", 0));
    assert_eq!(split_addend("odd-name"), ("odd-name", 0));
    assert_eq!(split_addend("-0x4"), ("-0x4", 0));
    let (bytes, words, text) = split_encoding(" 48 ba 00 00 00 00 00 00 00 80 movabsq $-0x8000000000000000, %rdx");
    assert_eq!((bytes.len(), words, text), (10, false, "movabsq $-0x8000000000000000, %rdx"));
    let (bytes, words, text) = split_encoding(" a9bb7bfd      stp     x29, x30, [sp, #-0x50]!");
    assert_eq!((bytes, words, text), (vec![0xfd, 0x7b, 0xbb, 0xa9], true, "stp     x29, x30, [sp, #-0x50]!"));
    assert!(is_label("0000000000000000 <_JIT_ENTRY>:"));
    assert!(!is_label("0: 48 8b"));
}

/// `_NOP`-like: no code_body, no data_body, only the dropped final jump.
#[test]
fn load_empty_code_and_data() {
    let nop = "void\nemit__FIX_NOP(\n    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])\n{\n    // \n    // nop.o:   file format elf64-x86-64\n    // \n    // Disassembly of section .text:\n    // \n    // 0000000000000000 <_JIT_ENTRY>:\n    // 0: ff 25 00 00 00 00             jmpq    *(%rip)                 # 0x6 <_JIT_ENTRY+0x6>\n    // 0000000000000002:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4\n    // 0: \n    // 0: \n}\n\n";
    let text = FIXTURE.replacen("void\nemit_trampoline(", &format!("{nop}void\nemit_trampoline("), 1).replacen(
        "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n",
        "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n    [_FIX_NOP] = {emit__FIX_NOP, 0, 0},\n",
        1,
    );
    let set = parse(PATH, &text).expect("parses");
    let s = set.stencils.iter().find(|s| s.name == "_FIX_NOP").expect("nop");
    assert!(s.code.is_empty() && s.data.is_empty() && s.emit.is_empty());
    assert!(s.instructions.is_empty() && s.relocations.is_empty());
    assert_eq!(s.data_comments.len(), 1);
    assert_eq!(s.data_comments[0].line, s.line + 13, "the second `0:` is the data's");
    // Table says otherwise → error at the table line.
    let bad = text.replace("{emit__FIX_NOP, 0, 0}", "{emit__FIX_NOP, 6, 0}");
    assert_err_at(&bad, line_of(&bad, "[_FIX_NOP]"), "code_size 6");
}

const AARCH64: &str = "void\nemit__FIX_ARM(\n    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n    const _PyUOpInstruction *instruction, jit_state *state)\n{\n    // 0000000000000000 <_JIT_ENTRY>:\n    // 0: 90000008      adrp    x8, 0x0 <_JIT_ENTRY>\n    // 0000000000000000:  R_AARCH64_ADR_GOT_PAGE       _JIT_OPARG\n    // 4: f9400108      ldr     x8, [x8]\n    // 0000000000000004:  R_AARCH64_LD64_GOT_LO12_NC   _JIT_OPARG\n    // 8: 52800021      mov     w1, #0x1                // =1\n    // c: 14000000      b       0xc <_JIT_ENTRY+0xc>\n    // 000000000000000c:  R_AARCH64_JUMP26     _JIT_JUMP_TARGET\n    // 10: 14000000      b       0x10 <_JIT_ENTRY+0x10>\n    // 0000000000000010:  R_AARCH64_JUMP26     _JIT_CONTINUE\n    // 10: 00 00 00 00\n    const unsigned char code_body[20] = {\n        0x08, 0x00, 0x00, 0x90, 0x08, 0x01, 0x40, 0xf9,\n        0x21, 0x00, 0x80, 0x52, 0x00, 0x00, 0x00, 0x14,\n    };\n    // 0: \n    // 0: OPERAND0\n    const unsigned char data_body[8] = {\n    };\n    memcpy(data, data_body, sizeof(data_body));\n    patch_64(data + 0x0, instruction->operand0);\n    memcpy(code, code_body, sizeof(code_body));\n    patch_aarch64_33rx(code + 0x0, (uintptr_t)data);\n    patch_aarch64_26r(code + 0xc, state->instruction_starts[instruction->jump_target]);\n}\n\nstatic const StencilGroup stencil_groups[MAX_UOP_ID + 1] = {\n    [_FIX_ARM] = {emit__FIX_ARM, 20, 8, {0x1, 0x0}},\n};\n";

#[test]
fn load_aarch64_words_and_later_spellings() {
    let set = parse(PATH, AARCH64).expect("parses");
    assert_eq!(set.arch(), Arch::Aarch64);
    let s = &set.stencils[0];
    assert_eq!(s.code.len(), 20);
    assert_eq!(&s.code[..4], &[0x08, 0x00, 0x00, 0x90]);
    assert_eq!(s.data, [0; 8]);
    assert_eq!(s.instructions[0].bytes, [0x08, 0x00, 0x00, 0x90]);
    assert_eq!(s.instructions[2].text, "mov w1, #0x1");
    assert_eq!(s.instructions.len(), 5, "the `b` at 0x10 is kept: the code still holds it");
    let kinds: Vec<(u64, RelocKind, i64)> = s.relocations.iter().map(|r| (r.offset, r.kind, r.addend)).collect();
    assert_eq!(
        kinds,
        [
            (0x0, RelocKind::Aarch64_ADR_GOT_PAGE, 0),
            (0x4, RelocKind::Aarch64_LD64_GOT_LO12_NC, 0),
            (0xc, RelocKind::Aarch64_JUMP26, 0),
            (0x10, RelocKind::Aarch64_JUMP26, 0),
        ]
    );
    assert_eq!(s.data_comments[1].kind, DataCommentKind::Slot(v(Term::Operand(0), 0)));
    let holes: Vec<&PatchCall> = s.holes().collect();
    assert_eq!(holes[0].value, v(Term::Operand(0), 0));
    assert_eq!(holes[1].func, PatchFn::Aarch64_33rx);
    assert_eq!(holes[2].value, v(Term::JumpTarget, 0));

    // An x86 patch function in an aarch64 header is mixed input.
    let mixed = AARCH64.replace("patch_aarch64_33rx(code + 0x0", "patch_x86_64_32rx(code + 0x0");
    assert_err_at(&mixed, line_of(&mixed, "patch_x86_64_32rx"), "mixed architectures");
}

// ---- the real header, when present -----------------------------------------

const REAL: &[&str] = &[
    "/tmp/cpython-stencils/3.13.5/x86_64-unknown-linux-gnu/jit_stencils.h",
    "/tmp/cpython-stencils/3.13.5/aarch64-unknown-linux-gnu/jit_stencils.h",
];

#[test]
fn load_real_headers_if_present() {
    for path in REAL {
        let Ok(text) = std::fs::read_to_string(path) else {
            println!("note: {path} is absent; skipping");
            continue;
        };
        let start = Instant::now();
        let set = match crate::load::load_path(std::path::Path::new(path)) {
            Ok(set) => set,
            Err(e) => panic!("{e}"),
        };
        println!("loaded {path}: {} stencils in {:?}", set.stencils.len(), start.elapsed());
        assert_eq!(set.arch(), if path.contains("aarch64") { Arch::Aarch64 } else { Arch::X86_64 });
        assert_eq!(set.stencils.len(), 235);
        assert!(set.stencils.iter().any(|s| s.name == "trampoline"));

        // Footer sizes, re-read independently of the parser.
        let mut table = 0;
        for line in text.lines() {
            let Some((_, rhs)) = line.split_once("= {emit_") else { continue };
            let f: Vec<&str> = rhs.trim_end_matches(['}', ',', ';']).split(", ").collect();
            let s = set.stencils.iter().find(|s| s.name == f[0]).expect("table entry has a stencil");
            assert_eq!(s.code_size().to_string(), f[1], "{}", s.name);
            assert_eq!(s.data_size().to_string(), f[2], "{}", s.name);
            table += 1;
        }
        assert_eq!(table, 235);

        // Every patch call and every relocation line became model entries.
        let patch_lines = text.lines().filter(|l| l.trim_start().starts_with("patch_")).count();
        let holes: usize = set.stencils.iter().map(|s| s.holes().count()).sum();
        assert_eq!(holes, patch_lines);
        let reloc_lines =
            text.lines().filter(|l| l.trim_start().strip_prefix("// ").is_some_and(|c| c.contains(":  R_"))).count();
        let relocs: usize = set.stencils.iter().map(|s| s.relocations.len()).sum();
        let dropped = reloc_lines - relocs;
        println!("{relocs} relocations ({dropped} on removed final jumps), {holes} patch calls");
        for s in &set.stencils {
            for r in &s.relocations {
                assert!(!r.symbol.to_string().is_empty());
                assert!(r.offset + r.kind.width() <= s.code_size());
            }
            // The printed encodings are the code bytes (no trampolines here).
            for i in &s.instructions {
                let at = i.offset as usize;
                assert_eq!(s.code.get(at..at + i.bytes.len()), Some(&i.bytes[..]), "{}", s.name);
            }
            // Self-consistency: every code hole sits on a printed relocation.
            for h in s.holes().filter(|h| h.section == Section::Code) {
                assert!(
                    s.relocations.iter().any(|r| r.offset == h.offset),
                    "{}: {} at code+{:#x} has no relocation",
                    s.name,
                    h.func,
                    h.offset
                );
            }
            for h in s.holes().filter(|h| h.section == Section::Data) {
                assert!(h.offset + h.func.width() <= s.data_size(), "{}", s.name);
            }
        }
        let nop = set.stencils.iter().find(|s| s.name == "_NOP").expect("_NOP");
        assert!(nop.code.is_empty() && nop.emit.is_empty());
    }
}

// ---- CPython 3.14+ ------------------------------------------------------------------

/// A hand-written x86-64 header in the 3.14+ shape (not CPython's text):
/// a shim, a uop with a trace-GOT call, a `_JIT_` slot, a string, trimmed
/// bodies; a uop with an all-zero data part (no data_body) and an aarch64-
/// free trampoline-less table; a `_Py_JIT_HAS_SHIM_CFI`-style block.
pub(crate) const FIXTURE_314: &str = r#"// 0123456789abcdef
// fixture: made up for stencilcheck's loader tests (3.14+ layout)

void
emit_shim(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, jit_state *state)
{
    // 0000000000000000 <_JIT_ENTRY>:
    // 0: 49 89 fc                      movq    %rdi, %r12
    // 3: c3                            retq
    const unsigned char code_body[4] = {
        0x49, 0x89, 0xfc, 0xc3,
    };
    memcpy(code, code_body, sizeof(code_body));
#ifdef _Py_JIT_HAS_SHIM_CFI
    register_shim_cfi(code);
#endif
}

void
emit__FIX_CALL(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, jit_state *state)
{
    // 0000000000000000 <_JIT_ENTRY>:
    // 0: 48 8b 35 00 00 00 00          movq    (%rip), %rsi            # 0x7 <_JIT_ENTRY+0x7>
    // 0000000000000003:  R_X86_64_REX_GOTPCRELX       _JIT_OPERAND0-0x4
    // 7: ff 15 00 00 00 00             callq   *(%rip)                 # 0xd <_JIT_ENTRY+0xd>
    // 0000000000000009:  R_X86_64_GOTPCRELX   PyFix_Call-0x4
    // d: 48 85 c0                      testq   %rax, %rax
    // 10: 0f 84 00 00 00 00             je      0x16 <_JIT_ENTRY+0x16>
    // 0000000000000012:  R_X86_64_PLT32       _JIT_ERROR_TARGET-0x4
    const unsigned char code_body[22] = {
        0x48, 0x8b, 0x35, 0x00, 0x00, 0x00, 0x00, 0xff,
        0x15, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0,
        0x0f, 0x84,
    };
    // 0: 'hi\x00'
    // 3: 00 00 00 00 00
    // 8: OPERAND0
    const unsigned char data_body[16] = {
        0x68, 0x69,
    };
    memcpy(data, data_body, sizeof(data_body));
    patch_got_symbol(state, 0x1);
    patch_64(data + 0x8, instruction->operand0);
    memcpy(code, code_body, sizeof(code_body));
    patch_x86_64_32rx(code + 0x3, (uintptr_t)data + 0x4);
    patch_x86_64_32rx(code + 0x9, got_symbol_address(0x1, state) - 4);
    patch_32r(code + 0x12, state->instruction_starts[instruction->error_target] + -0x4);
}

void
emit__FIX_SLOT(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, jit_state *state)
{
    // 0000000000000000 <_JIT_ENTRY>:
    // 0: 48 8b 05 00 00 00 00          movq    (%rip), %rax            # 0x7 <_JIT_ENTRY+0x7>
    // 0000000000000003:  R_X86_64_REX_GOTPCRELX       _JIT_OPARG-0x4
    // 7: 0f 85 00 00 00 00             jne     0xd <_JIT_ENTRY+0xd>
    // 0000000000000009:  R_X86_64_PLT32       _JIT_JUMP_TARGET-0x4
    const unsigned char code_body[13] = {
        0x48, 0x8b, 0x05, 0x00, 0x00, 0x00, 0x00, 0x0f,
        0x85,
    };
    // 0: OPARG
    patch_64(data + 0x0, instruction->oparg);
    memcpy(code, code_body, sizeof(code_body));
    patch_x86_64_32rx(code + 0x3, (uintptr_t)data + -0x4);
    patch_32r(code + 0x9, state->instruction_starts[instruction->jump_target] + -0x4);
}

void
emit__FIX_EMPTY(
    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
    const _PyUOpInstruction *instruction, jit_state *state)
{
}

static_assert(SYMBOL_MASK_WORDS >= 1, "SYMBOL_MASK_WORDS too small");

typedef struct {
    void (*emit)(
        unsigned char *code, unsigned char *data, _PyExecutorObject *executor,
        const _PyUOpInstruction *instruction, jit_state *state);
    size_t code_size;
    size_t data_size;
    symbol_mask trampoline_mask;
    symbol_mask got_mask;
} StencilGroup;

static const StencilGroup shim = {emit_shim, 4, 0, {0}, {0}};

static const StencilGroup stencil_groups[MAX_UOP_REGS_ID + 1] = {
    [_FIX_CALL] = {emit__FIX_CALL, 22, 16, {0}, {0x02}},
    [_FIX_SLOT] = {emit__FIX_SLOT, 13, 8, {0}, {0}},
    [_FIX_EMPTY] = {emit__FIX_EMPTY, 0, 0, {0}, {0}},
};

static const void * const symbols_map[3] = {
    0,
    [1] = &PyFix_Call,
    &PyFix_Unused,
};

#define _Py_JIT_HAS_SHIM_CFI 1
#if defined(_Py_JIT_HAS_SHIM_CFI)
static const unsigned char shim_cfi[] = {
    0x01, 0x02,
};
#endif
"#;

fn parse_314(text: &str) -> StencilSet {
    parse(PATH, text).unwrap_or_else(|e| panic!("{e}"))
}

fn with_314(from: &str, to: &str) -> String {
    assert!(FIXTURE_314.contains(from), "fixture lacks `{from}`");
    FIXTURE_314.replacen(from, to, 1)
}

#[test]
fn load_314_dialect_is_read_off_the_content() {
    use crate::target::{ObjectFormat, Version};
    assert_eq!(dialect(FIXTURE), Version::V3_13);
    assert_eq!(dialect(FIXTURE_314), Version::V3_14);
    // A comment naming jit_state does not make a 3.13 header 3.14+.
    assert_eq!(dialect(&format!("// jit_state *state\n{FIXTURE}")), Version::V3_13);
    let set = parse_314(FIXTURE_314);
    assert_eq!(set.target.version, Version::V3_14);
    assert_eq!(set.target.format, ObjectFormat::Elf);
    assert_eq!(set.arch(), Arch::X86_64);
    let set = parse(PATH, FIXTURE).unwrap();
    assert_eq!(set.target.version, Version::V3_13);
}

#[test]
fn load_314_fixture_field_by_field() {
    let set = parse_314(FIXTURE_314);
    let names: Vec<&str> = set.stencils.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shim", "_FIX_CALL", "_FIX_SLOT", "_FIX_EMPTY"]);
    assert_eq!(set.symbols_map, [None, Some("PyFix_Call".to_string()), Some("PyFix_Unused".to_string())]);

    let shim = &set.stencils[0];
    assert_eq!(shim.code, [0x49, 0x89, 0xfc, 0xc3]);
    assert_eq!(
        shim.emit,
        [EmitOp::CopyCode { line: line_of(FIXTURE_314, "memcpy(code") }],
        "the #ifdef'd call is skipped"
    );

    let call = &set.stencils[1];
    assert_eq!(call.code.len(), 22, "zero-extended to code_body[22]");
    assert_eq!(&call.code[16..], &[0x0f, 0x84, 0, 0, 0, 0]);
    assert_eq!(call.data.len(), 16);
    assert_eq!(&call.data[..3], b"hi\0");
    assert_eq!(call.ordinals, std::collections::BTreeMap::from([(1, "PyFix_Call".to_string())]));
    assert_eq!((call.trampoline_mask.clone(), call.got_mask.clone()), (vec![0], vec![2]));
    let l = |needle: &str| line_of(FIXTURE_314, needle);
    let patch = |func, section, offset, value, needle: &str| {
        EmitOp::Patch(PatchCall { func, section, offset, value, line: l(needle) })
    };
    assert_eq!(
        call.emit,
        [
            EmitOp::CopyData { line: l("memcpy(data, data_body") },
            patch(PatchFn::GotSymbol, Section::Got, 1, v(Term::Ordinal(1), 0), "patch_got_symbol(state, 0x1)"),
            patch(PatchFn::P64, Section::Data, 8, v(Term::Operand(0), 0), "patch_64(data + 0x8"),
            EmitOp::CopyCode {
                line: FIXTURE_314
                    .lines()
                    .enumerate()
                    .skip(call.line)
                    .find(|(_, t)| t.contains("memcpy(code"))
                    .unwrap()
                    .0
                    + 1
            },
            patch(PatchFn::X86_64_32rx, Section::Code, 3, v(Term::Data, 4), "code + 0x3, (uintptr_t)data + 0x4"),
            patch(
                PatchFn::X86_64_32rx,
                Section::Code,
                9,
                v(Term::GotSymbol(1), -4),
                "got_symbol_address(0x1, state) - 4"
            ),
            patch(PatchFn::P32r, Section::Code, 0x12, v(Term::ErrorTarget, -4), "code + 0x12"),
        ]
    );
    let kinds: Vec<(u64, RelocKind, Symbol)> =
        call.relocations.iter().map(|r| (r.offset, r.kind, r.symbol.clone())).collect();
    assert_eq!(
        kinds,
        [
            (3, RelocKind::X86_64_REX_GOTPCRELX, Symbol::Operand(0)),
            (9, RelocKind::X86_64_GOTPCRELX, Symbol::External("PyFix_Call".into())),
            (0x12, RelocKind::X86_64_PLT32, Symbol::ErrorTarget),
        ]
    );
    assert_eq!(call.data_comments.len(), 3);

    // No data_body: the data part is the table's 8 zero bytes, and the
    // comment after the code_body is its slot.
    let slot = &set.stencils[2];
    assert_eq!(slot.data, [0; 8]);
    assert_eq!(
        slot.data_comments,
        [DataComment { offset: 0, kind: DataCommentKind::Slot(v(Term::Oparg, 0)), line: l("// 0: OPARG") }]
    );
    assert!(slot.ordinals.is_empty() && !slot.emit.iter().any(|op| matches!(op, EmitOp::CopyData { .. })));
    let empty = &set.stencils[3];
    assert!(empty.code.is_empty() && empty.data.is_empty() && empty.emit.is_empty());
}

#[test]
fn load_314_omitted_bodies_take_the_table_sizes() {
    // An all-zero code_body is left out too: the sizes come from the table
    // and the comments split into the code listing and the data listing.
    let text = FIXTURE_314
        .replacen("    const unsigned char code_body[13] = {\n        0x48, 0x8b, 0x05, 0x00, 0x00, 0x00, 0x00, 0x0f,\n        0x85,\n    };\n", "", 1)
        .replacen("    // 0: 48 8b 05 00 00 00 00          movq    (%rip), %rax            # 0x7 <_JIT_ENTRY+0x7>\n", "    // 0: 00 00 00 00 00 00 00          addb    %al, (%rax)\n", 1)
        .replacen("    // 7: 0f 85 00 00 00 00             jne     0xd <_JIT_ENTRY+0xd>\n", "    // 7: 00 00 00 00 00 00             addb    %al, (%rax)\n", 1);
    let set = parse_314(&text);
    let slot = &set.stencils[2];
    assert_eq!(slot.code, [0; 13]);
    assert_eq!(slot.instructions.len(), 2);
    assert_eq!(slot.relocations.len(), 2);
    assert_eq!(slot.data_comments.len(), 1, "`0: OPARG` is the data's");
    // Non-zero instruction bytes with no code_body: the body went missing.
    let text = FIXTURE_314.replacen(
        "    const unsigned char code_body[13] = {\n        0x48, 0x8b, 0x05, 0x00, 0x00, 0x00, 0x00, 0x0f,\n        0x85,\n    };\n",
        "",
        1,
    );
    assert_err_at(&text, line_of(&text, "// 0: 48 8b 05"), "has no code_body");
    // A declared size that disagrees with the table.
    let text = with_314("code_body[13]", "code_body[14]");
    assert_err_at(&text, line_of(&text, "[_FIX_SLOT]"), "code_size 13");
}

#[test]
fn load_314_ordinals_must_name_symbols() {
    let text = with_314("got_symbol_address(0x1, state) - 4", "got_symbol_address(0x0, state) - 4");
    assert_err_at(&text, line_of(&text, "got_symbol_address(0x0"), "symbols_map[0] (line");
    let text = with_314("patch_got_symbol(state, 0x1);", "patch_got_symbol(state, 0x3);");
    assert_err_at(&text, line_of(&text, "patch_got_symbol(state, 0x3)"), "has 3 entries");
    let cut = line_of(FIXTURE_314, "static const void * const symbols_map");
    let text: String = FIXTURE_314.lines().take(cut - 1).map(|l| format!("{l}\n")).collect();
    assert_err_at(&text, line_of(&text, "patch_got_symbol(state, 0x1)"), "has no symbols_map");
    // Unused 0 entries and unused symbols are fine; the ordinals are what the holes use.
    let set = parse_314(&with_314("    &PyFix_Unused,\n", "    0,\n"));
    assert_eq!(set.symbols_map.len(), 3);
}

#[test]
fn load_314_statement_forms() {
    let l = 7;
    let got = statement_of("patch_got_symbol(state, 0x2);", l);
    assert_eq!(
        got,
        Ok(EmitOp::Patch(PatchCall {
            func: PatchFn::GotSymbol,
            section: Section::Got,
            offset: 2,
            value: v(Term::Ordinal(2), 0),
            line: l
        }))
    );
    let tramp = statement_of("patch_aarch64_trampoline(code + 0x8, 0x1, state);", l);
    assert_eq!(
        tramp,
        Ok(EmitOp::Patch(PatchCall {
            func: PatchFn::Aarch64_Trampoline,
            section: Section::Code,
            offset: 8,
            value: v(Term::Ordinal(1), 0),
            line: l
        }))
    );
    let x86 = statement_of("patch_x86_64_trampoline(code + 0x11, 0x0, state);", l);
    assert!(matches!(x86, Ok(EmitOp::Patch(PatchCall { func: PatchFn::X86_64_Trampoline, offset: 0x11, .. }))));
    // Display (model.rs) spells every form back so that it parses again.
    for op in [got, tramp, x86, statement_of("patch_aarch64_33rx(code + 0x4, got_symbol_address(0x3, state));", l)] {
        let Ok(EmitOp::Patch(p)) = op else { panic!() };
        assert_eq!(statement_of(&format!("{p};"), l), Ok(EmitOp::Patch(p.clone())), "{p}");
    }
    for (bad, part) in [
        ("patch_got_symbol(0x2);", "expected `patch_got_symbol(state, ORDINAL)`"),
        ("patch_got_symbol(code + 0x2, 0x2);", "expected `patch_got_symbol(state, ORDINAL)`"),
        ("patch_got_symbol(state, x);", "bad symbol ordinal `x`"),
        ("patch_aarch64_trampoline(code + 0x8, 0x1);", "(location, ORDINAL, state)"),
        ("patch_aarch64_trampoline(code + 0x8, 0x1, data);", "(location, ORDINAL, state)"),
        ("patch_aarch64_trampoline(stack + 0x8, 0x1, state);", "cannot parse patch location"),
        ("patch_aarch64_trampoline(code + 0x8, 0x100000000, state);", "bad symbol ordinal"),
        ("patch_64(code, );", "patch"),
        ("patch_32r(code + 0x4, );", "patch"),
    ] {
        let e = statement_of(bad, l).unwrap_err();
        assert!(e.contains(part), "`{bad}`: {e}");
    }
}

fn statement_of(t: &str, line: usize) -> Result<EmitOp, String> {
    cexpr::statement(t, line)
}

#[test]
fn load_314_footer_forms() {
    // Masks of several words; an entry without masks (older main).
    let set = parse_314(&with_314(
        "{emit__FIX_CALL, 22, 16, {0}, {0x02}}",
        "{emit__FIX_CALL, 22, 16, {0x1, 0x80000000}, {0x02, 0}}",
    ));
    assert_eq!(set.stencils[1].trampoline_mask, [1, 0x8000_0000]);
    assert_eq!(set.stencils[1].got_mask, [2, 0]);
    let set = parse_314(&with_314("{emit__FIX_SLOT, 13, 8, {0}, {0}}", "{emit__FIX_SLOT, 13, 8}"));
    assert!(set.stencils[2].trampoline_mask.is_empty() && set.stencils[2].got_mask.is_empty());
    // One-line symbols_map.
    let text = FIXTURE_314.replace(
        "static const void * const symbols_map[3] = {\n    0,\n    [1] = &PyFix_Call,\n    &PyFix_Unused,\n};",
        "static const void * const symbols_map[3] = { 0, &PyFix_Call, 0 };",
    );
    assert_eq!(parse_314(&text).symbols_map, [None, Some("PyFix_Call".into()), None]);

    let entry = line_of(FIXTURE_314, "[_FIX_CALL]");
    for (from, to, part) in [
        ("{0}, {0x02}}", "{0}, {0x2g}}", "malformed symbol mask `{0x2g}`"),
        ("{0}, {0x02}}", "{0}, 0x02}", "malformed symbol mask `0x02`"),
        ("{0}, {0x02}}", "{0}, {0x02}, {0}, {0}}", "has 7 fields"),
        ("{0}, {0x02}}", "{0}, {0x100000000}}", "malformed symbol mask"),
    ] {
        let text = with_314(from, to);
        assert_err_at(&text, entry, part);
    }
    let map = line_of(FIXTURE_314, "static const void * const symbols_map");
    for (from, to, at, part) in [
        ("    &PyFix_Unused,\n", "    &PyFix_Unused, 0,\n", map + 3, "symbols_map[3] has an entry [3]"),
        ("    [1] = &PyFix_Call,\n", "    [0] = &PyFix_Call,\n", map + 2, "symbols_map[0] is given twice"),
        ("    &PyFix_Unused,\n", "    PyFix_Unused,\n", map + 3, "malformed symbols_map entry `PyFix_Unused`"),
        ("symbols_map[3] = {", "symbols_map[x] = {", map, "bad symbols_map size"),
        ("symbols_map[3] = {", "symbols_map[3] {", map, "expected `= {`"),
        ("    &PyFix_Unused,\n};", "    &PyFix_Unused,\n}", map + 4, "expected `;`"),
    ] {
        let text = with_314(from, to);
        assert_err_at(&text, at, part);
    }
    let text = format!("{FIXTURE_314}static const void * const symbols_map[1] = {{ 0 }};\n");
    assert_err_at(&text, text.lines().count(), "a second symbols_map");
    let cut = line_of(FIXTURE_314, "[1] = &PyFix_Call");
    let text: String = FIXTURE_314.lines().take(cut).map(|l| format!("{l}\n")).collect();
    assert_err_at(&text, cut, "truncated: symbols_map");
}

#[test]
fn load_314_mixed_dialects_are_refused() {
    // A 3.13 signature in a 3.14+ header.
    let text = with_314(
        "emit__FIX_SLOT(\n    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n    const _PyUOpInstruction *instruction, jit_state *state)",
        "emit__FIX_SLOT(\n    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])",
    );
    assert_err_at(&text, line_of(&text, "emit__FIX_SLOT("), "3.13 signature");
    // jit_state calls in a 3.13 header.
    for (from, to) in [
        ("patch_64(data + 0x8, instruction->oparg);", "patch_got_symbol(state, 0x1);"),
        (
            "patch_32r(code + 0x1c, (uintptr_t)data + -0x2);",
            "patch_32r(code + 0x1c, got_symbol_address(0x1, state) - 4);",
        ),
    ] {
        let text = with(from, to);
        assert_err_at(&text, line_of(FIXTURE, from), "needs CPython 3.14+'s jit_state");
    }
}

#[test]
fn load_314_foreign_relocations_are_not_supported() {
    use crate::error::Refusal;
    for (kind, part, want) in [
        // Another format's relocation among ELF ones: bad input, named.
        ("X86_64_RELOC_GOT_LOAD", "mixed object formats: X86_64_RELOC_GOT_LOAD is Mach-O", Refusal::BadInput),
        ("IMAGE_REL_AMD64_REL32", "mixed object formats: IMAGE_REL_AMD64_REL32 is COFF", Refusal::BadInput),
        // Another machine's: mixed architectures come first.
        ("ARM64_RELOC_BRANCH26", "mixed", Refusal::BadInput),
        // i686 is a target, but not in an x86-64 header.
        ("IMAGE_REL_I386_DIR32", "mixed", Refusal::BadInput),
        ("R_X86_64_BOGUS", "unknown relocation type `R_X86_64_BOGUS`", Refusal::BadInput),
    ] {
        let text = with_314("R_X86_64_GOTPCRELX   PyFix_Call-0x4", &format!("{kind}   PyFix_Call-0x4"));
        assert_err_at(&text, line_of(FIXTURE_314, "R_X86_64_GOTPCRELX   PyFix_Call"), part);
        // Valid input we cannot handle (exit 3) versus bad input (exit 2).
        assert_eq!(parse_err(&text).kind, want, "{kind}");
    }
    // 32-bit objdump prints 8-digit relocation offsets.
    let text = with_314("0000000000000009:  R_X86_64_GOTPCRELX", "00000009:  IMAGE_REL_I386_REL32");
    assert_err_at(&text, line_of(FIXTURE_314, "0000000000000009:"), "IMAGE_REL_I386_REL32 is i686");
}

#[test]
fn load_314_every_prefix_and_mutation_parses_or_errs() {
    use rand::{Rng, SeedableRng};
    let lines: Vec<&str> = FIXTURE_314.lines().collect();
    for n in 0..=lines.len() {
        let text: String = lines[..n].iter().map(|l| format!("{l}\n")).collect();
        let result = std::panic::catch_unwind(|| parse(PATH, &text));
        let result = result.unwrap_or_else(|_| panic!("panicked on the first {n} lines"));
        if let Err(e) = &result {
            let line: usize = e.location.rsplit(':').next().and_then(|l| l.parse().ok()).expect("file:line");
            assert!(line >= 1 && line <= n.max(1), "line {line} out of range for {n} lines: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }
    for (cut, _) in FIXTURE_314.char_indices() {
        assert!(std::panic::catch_unwind(|| parse(PATH, &FIXTURE_314[..cut])).is_ok(), "panicked at byte {cut}");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(314);
    let bytes = FIXTURE_314.as_bytes();
    for _ in 0..3000 {
        let mut m = bytes.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..m.len());
            match rng.gen_range(0..3) {
                0 => m[i] = b"{}[],;:()&+-0x1 \n#/"[rng.gen_range(0..19)],
                1 => m[i] ^= 1 << rng.gen_range(0..7),
                _ => {
                    m.remove(i);
                }
            }
        }
        let text = String::from_utf8_lossy(&m).into_owned();
        let r = std::panic::catch_unwind(|| parse(PATH, &text));
        assert!(r.is_ok(), "panicked on:\n{text}");
    }
}

/// The real headers (CPython 3.13.5's, and main's expected test headers, when
/// present locally): truncated or byte-flipped anywhere, they load or fail
/// with one line naming a line of the file, never a panic.
#[test]
fn load_real_headers_truncated_and_flipped_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut paths: Vec<String> = REAL.iter().map(|p| p.to_string()).collect();
    if let Ok(dir) = std::fs::read_dir("/tmp/cpython-main/test") {
        let mut more: Vec<String> =
            dir.filter_map(|e| e.ok()).map(|e| e.path().display().to_string()).filter(|p| p.ends_with(".h")).collect();
        more.sort();
        paths.extend(more);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    for path in &paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            println!("note: {path} is absent; skipping");
            continue;
        };
        let big = text.len() > 100_000;
        let (cuts, flips) = if big { (4, 4) } else { (200, 300) };
        let total = text.lines().count().max(1);
        let check = |t: &str, what: &str| {
            let r = std::panic::catch_unwind(|| parse(path, t)).unwrap_or_else(|_| panic!("{path}: panicked ({what})"));
            if let Err(e) = r {
                let line: usize = e
                    .location
                    .rsplit(':')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or_else(|| panic!("{path}: no line in `{e}`"));
                assert!(line >= 1 && line <= total + 1, "{path}: line {line} of {total} ({what}): {e}");
                assert!(!e.to_string().contains('\n'));
            }
        };
        for _ in 0..cuts {
            let mut cut = rng.gen_range(0..text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            check(&text[..cut], &format!("cut at byte {cut}"));
        }
        for _ in 0..flips {
            let mut b = text.clone().into_bytes();
            let i = rng.gen_range(0..b.len());
            b[i] = b"{}[],;:()&+-0x1 \n#/ez"[rng.gen_range(0..21)];
            check(&String::from_utf8_lossy(&b), &format!("byte {i} changed"));
        }
    }
}

/// Main's expected test headers (3.14+ layout) for Linux load when present.
#[test]
fn load_main_test_headers_if_present() {
    use crate::target::Version;
    for (triple, arch) in [("x86_64-unknown-linux-gnu", Arch::X86_64), ("aarch64-unknown-linux-gnu", Arch::Aarch64)] {
        let path = format!("/tmp/cpython-main/test/{triple}.h");
        let Ok(text) = std::fs::read_to_string(&path) else {
            println!("note: {path} is absent; skipping");
            continue;
        };
        let set = parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((set.arch(), set.target.version), (arch, Version::V3_14), "{path}");
        assert_eq!(set.stencils[0].name, "shim");
        let patch_lines = text.lines().filter(|l| l.trim_start().starts_with("patch_")).count();
        assert_eq!(set.stencils.iter().map(|s| s.holes().count()).sum::<usize>(), patch_lines);
        for s in &set.stencils {
            for h in s.holes().filter(|h| h.section == Section::Code) {
                assert!(s.relocations.iter().any(|r| r.offset == h.offset), "{}: {h} has no relocation", s.name);
            }
        }
    }
}

/// The listing's line classifiers take exactly objdump's shapes: a head of
/// 1 to 16 hex digits, nothing Rust's integer parser would also accept
/// (`+4` parses as 4, 17 digits with leading zeros fit a u64).
#[test]
fn listing_heads_are_hex_digits_only() {
    use super::listing::{is_label, relocation_line, split_encoding};
    let r = relocation_line("0000000000000004:  R_X86_64_PLT32 sym-0x4").expect("objdump's shape");
    assert_eq!((r.offset, r.kind, r.target), (4, "R_X86_64_PLT32", "sym-0x4"));
    assert!(relocation_line("+4:  R_X86_64_PLT32 sym-0x4").is_none());
    assert!(relocation_line("00000000000000000004:  R_X86_64_PLT32 sym-0x4").is_none());
    assert!(relocation_line("0000000000000000g:  R_X86_64_PLT32 sym").is_none());
    assert!(is_label("0000000000000000 <_JIT_ENTRY>:"));
    assert!(!is_label("zz <_JIT_ENTRY>:"));
    assert!(!is_label(" <_JIT_ENTRY>:"));
    assert_eq!(split_encoding("+f nop").0, Vec::<u8>::new());
    assert_eq!(split_encoding("0f 1f nop").0, [0x0f, 0x1f]);
}

#[test]
fn load_error_data_comment_heads_and_slots() {
    // A signed head is not an offset objdump prints.
    let text = with("// 18: CONTINUE", "// +18: CONTINUE");
    assert_err_at(&text, line_of(FIXTURE, "// 18: CONTINUE"), "unrecognized data comment `+18: CONTINUE`");
    // Bytes are two hex digits each; a longer hex word is no byte listing
    // (it reads as a number slot).
    let text = with("// 3: 00 00 00 00 00", "// 3: 0000");
    let set = parse(PATH, &text).expect("parses");
    let at3 = set.stencils[0].data_comments.iter().find(|d| d.offset == 3).expect("comment at 3");
    assert!(matches!(at3.kind, DataCommentKind::Slot(_)), "{:?}", at3.kind);
    let set = parse(PATH, FIXTURE).expect("parses");
    let at3 = set.stencils[0].data_comments.iter().find(|d| d.offset == 3).expect("comment at 3");
    assert_eq!(at3.kind, DataCommentKind::Bytes);
}

/// Only the removed jump's own relocation goes with it: one just past the
/// jump is outside the code and named as such.
#[test]
fn load_error_relocation_just_past_the_removed_jump() {
    let text = FIXTURE.replace(
        "0000000000000003:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4\n    // 1: ",
        "0000000000000003:  R_X86_64_GOTPCRELX   _JIT_CONTINUE-0x4\n    // 0000000000000007:  R_X86_64_64   _JIT_TOP\n    // 1: ",
    );
    assert_ne!(text, FIXTURE);
    assert_err_at(&text, line_of(&text, "0000000000000007:"), "R_X86_64_64 relocation at 0x7 lies outside code_body");
}

/// A signature may end in `) {` on its last line; a comment or another
/// `emit_` line inside it is a malformed signature, not more parameters.
#[test]
fn load_signature_shapes() {
    let one_line = with(
        "uintptr_t instruction_starts[])\n{\n    // \n    // fix_add.o",
        "uintptr_t instruction_starts[]) {\n    // \n    // fix_add.o",
    );
    let a = parse(PATH, &one_line).expect("`) {` ends the signature");
    let b = parse(PATH, FIXTURE).expect("parses");
    assert_eq!(a.stencils[0].code, b.stencils[0].code);
    assert_eq!(a.stencils[0].relocations.len(), b.stencils[0].relocations.len());
    for intruder in ["    // a comment", "emit__FIX_SUB("] {
        let text = with(
            "    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])\n{\n    // \n    // fix_add.o",
            &format!("    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n{intruder}\n    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])\n{{\n    // \n    // fix_add.o"),
        );
        assert_err_at(&text, line_of(FIXTURE, "unsigned char *code") + 1, "malformed signature of emit__FIX_ADD");
    }
}

/// Blank lines inside a run of listing comments are skipped, not its end.
#[test]
fn load_blank_lines_inside_the_listing() {
    let text = with("    // 7: 48 01 c3", "\n    // 7: 48 01 c3");
    let a = parse(PATH, &text).expect("parses");
    let b = parse(PATH, FIXTURE).expect("parses");
    assert_eq!(a.stencils[0].instructions.len(), b.stencils[0].instructions.len());
    assert_eq!(a.stencils[0].relocations.len(), b.stencils[0].relocations.len());
}

/// The body length limit is inclusive.
#[test]
fn load_body_length_limit() {
    let at = |n: usize| {
        with(
            "const unsigned char data_body[32] = {\n        0x68, 0x69, 0x00,\n    };",
            &format!("const unsigned char data_body[{n}] = {{\n    }};"),
        )
    };
    let limit = crate::load::MAX_BODY;
    let e = parse_err(&at(limit));
    assert!(!e.to_string().contains("implausibly large"), "{e}");
    assert_err_at(
        &at(limit + 1),
        line_of(FIXTURE, "data_body[32]"),
        &format!("data_body[{}] is implausibly large", limit + 1),
    );
}

/// With no code_body the listing must end in `0:` before the data's
/// comments; without it the split between code and data is unknown.
#[test]
fn load_error_empty_code_without_an_end_line() {
    let nop = "void\nemit__FIX_NOP(\n    unsigned char *code, unsigned char *data, _PyExecutorObject *executor,\n    const _PyUOpInstruction *instruction, uintptr_t instruction_starts[])\n{\n    // \n    // nop.o:   file format elf64-x86-64\n    // 0000000000000000 <_JIT_ENTRY>:\n}\n\n";
    let text = FIXTURE.replacen("void\nemit_trampoline(", &format!("{nop}void\nemit_trampoline("), 1).replacen(
        "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n",
        "    [_FIX_ADD] = {emit__FIX_ADD, 38, 32},\n    [_FIX_NOP] = {emit__FIX_NOP, 0, 0},\n",
        1,
    );
    assert_err_at(
        &text,
        line_of(&text, "emit__FIX_NOP(") + 7,
        "has no code_body and its disassembly has no `0:` end line",
    );
}

/// Only inside a preprocessor block is a statement we do not model
/// skipped, and never a `patch_` or `memcpy` one; after `#endif` (the
/// nesting count back at zero) it is bad input again.
#[test]
fn load_314_preprocessor_blocks_skip_only_unmodelled_statements() {
    let cfi = "#ifdef _Py_JIT_HAS_SHIM_CFI\n    register_shim_cfi(code);\n#endif\n";
    parse_314(FIXTURE_314);
    // Outside any block.
    let text = with_314(cfi, &format!("{cfi}    register_shim_cfi(code);\n"));
    assert_err_at(&text, line_of(FIXTURE_314, "#endif") + 1, "register_shim_cfi");
    // Inside, a patch call that does not parse is still an error.
    let text = with_314("    register_shim_cfi(code);\n", "    patch_64(code, );\n");
    assert!(parse(PATH, &text).is_err(), "a malformed patch_ call inside #if");
    let text = with_314("    register_shim_cfi(code);\n", "    memcpy(code, );\n");
    assert!(parse(PATH, &text).is_err(), "a malformed memcpy inside #if");
}

/// The table's sizes: a stencil body of exactly the limit is plausible,
/// one byte more is not (code and data alike).
#[test]
fn load_314_table_size_limits_are_inclusive() {
    let limit = crate::load::MAX_BODY;
    for (from, what) in [("{emit__FIX_EMPTY, 0, 0,", "code_size"), ("{emit__FIX_EMPTY, 0, 0,", "data_size")] {
        let entry = |n: usize| {
            let to = if what == "code_size" {
                format!("{{emit__FIX_EMPTY, {n}, 0,")
            } else {
                format!("{{emit__FIX_EMPTY, 0, {n},")
            };
            with_314(from, &to)
        };
        let e = parse(PATH, &entry(limit)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!e.contains("implausibly large"), "{what} at the limit: {e}");
        assert_err_at(
            &entry(limit + 1),
            line_of(FIXTURE_314, "[_FIX_EMPTY]"),
            &format!("{what} {} of emit__FIX_EMPTY is implausibly large", limit + 1),
        );
    }
}

/// With no code_body the code is all zero; a listed instruction with
/// non-zero bytes inside the code means the body went missing, but one
/// at the code's end (CPython's cut final jump) does not.
#[test]
fn load_314_a_listed_jump_past_an_omitted_code_is_not_a_missing_body() {
    let text = FIXTURE_314
        .replacen("    const unsigned char code_body[13] = {\n        0x48, 0x8b, 0x05, 0x00, 0x00, 0x00, 0x00, 0x0f,\n        0x85,\n    };\n", "", 1)
        .replacen("    // 0: 48 8b 05 00 00 00 00          movq    (%rip), %rax            # 0x7 <_JIT_ENTRY+0x7>\n", "    // 0: 00 00 00 00 00 00 00          addb    %al, (%rax)\n", 1)
        .replacen("    // 7: 0f 85 00 00 00 00             jne     0xd <_JIT_ENTRY+0xd>\n    // 0000000000000009:  R_X86_64_PLT32       _JIT_JUMP_TARGET-0x4\n",
                  "    // 7: 00 00 00 00 00 00             addb    %al, (%rax)\n    // 0000000000000009:  R_X86_64_PLT32       _JIT_JUMP_TARGET-0x4\n    // d: e9 00 00 00 00                jmp     0x12 <_JIT_ENTRY+0x12>\n    // 000000000000000e:  R_X86_64_PLT32       _JIT_CONTINUE-0x4\n", 1);
    let set = parse_314(&text);
    assert_eq!(set.stencils[2].code, [0; 13]);
}
