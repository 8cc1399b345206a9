//! Any bytes as an object file (ELF, Mach-O or COFF, by magic): the loader
//! answers with a stencil or one error naming the file, and never panics or
//! drops relocations silently (a stencil it builds has every relocation
//! inside its code).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    match stencilcheck::load::load_object(Path::new("fuzz.o"), data) {
        Ok(stencil) => {
            for r in &stencil.relocations {
                assert!(r.offset < stencil.code.len() as u64 + 8, "relocation at {:#x} past the code", r.offset);
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.o") && !shown.contains('\n'), "{shown:?}");
        }
    }
});
