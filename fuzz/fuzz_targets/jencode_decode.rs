#![no_main]

use dirac_wire::jencode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = jencode::decode(data) else {
        return;
    };
    // JSON input never yields a `time` or a non-string key.
    let encoded = jencode::encode(&value).expect("re-encode");
    match jencode::decode(&encoded) {
        Ok(again) => assert!(
            tokenmanager_fuzz::same(&value, &again, true),
            "{value:?} != {again:?}"
        ),
        Err(e) => assert!(tokenmanager_fuzz::has_short_year(&value), "{e}: {value:?}"),
    }
});
