#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| advlens_fuzz::targets::image(data));
