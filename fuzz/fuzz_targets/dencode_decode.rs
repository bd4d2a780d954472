#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenmanager_fuzz::codec::dencode;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok((value, end)) = dencode::decode(data) else {
        return;
    };
    assert!(end <= data.len());
    let encoded = dencode::encode(&value);
    let (again, again_end) = dencode::decode(&encoded).expect("re-decode");
    assert_eq!(again_end, encoded.len());
    assert!(
        common::same(&value, &again, false),
        "{value:?} != {again:?}"
    );
});
