#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenmanager_fuzz::codec::jencode;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = jencode::decode(data) else {
        return;
    };
    // JSON input never yields a `time` or a non-string key.
    let encoded = jencode::encode(&value).expect("re-encode");
    match jencode::decode(&encoded) {
        Ok(again) => assert!(common::same(&value, &again, true), "{value:?} != {again:?}"),
        Err(e) => assert!(common::has_short_year(&value), "{e}: {value:?}"),
    }
});
