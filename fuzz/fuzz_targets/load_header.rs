//! Any text as a `jit_stencils.h`: the header reader answers with a set of
//! stencils or one error naming the file and line, and never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = stencilcheck::load::header::parse("fuzz.h", &text) {
        // One line, naming the file: what a user sees on exit 2.
        let shown = e.to_string();
        assert!(shown.starts_with("fuzz.h") && !shown.contains('\n'), "{shown:?}");
    }
});
