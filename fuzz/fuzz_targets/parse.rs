//! Feeds arbitrary bytes to the Dockerfile parser: `parse`, `parse_ast`,
//! `dump` and `ParseError::render` must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    match rbuild_parser::parse(&src) {
        Ok(df) => {
            let _ = df.dump();
        }
        Err(e) => {
            let _ = e.render("Dockerfile", &src);
        }
    }
    if let Ok(ast) = rbuild_parser::parse_ast(&src) {
        let _ = ast.dump();
    }
});
