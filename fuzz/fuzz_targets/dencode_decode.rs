#![no_main]

use dirac_wire::dencode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((value, end)) = dencode::decode(data) else {
        return;
    };
    assert!(end <= data.len());
    let encoded = dencode::encode(&value);
    let (again, again_end) = dencode::decode(&encoded).expect("re-decode");
    assert_eq!(again_end, encoded.len());
    // Rebuilt floats may merge float keys (DIRAC's Python does the same): only the re-decode
    // is required of such a dict.
    assert!(
        tokenmanager_fuzz::same(&value, &again, false) || tokenmanager_fuzz::has_float_key(&value),
        "{value:?} != {again:?}"
    );
});
