#![no_main]

use dirac_wire::{frame, mixed};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut reader = data;
    let Ok(frame) = runtime.block_on(frame::read_frame(&mut reader, LIMIT)) else {
        return;
    };
    let wire = if frame.keep_alive {
        frame::encode_keep_alive(&frame.payload)
    } else {
        frame::encode_frame(&frame.payload)
    };
    let mut rewired = &wire[..];
    let again = runtime
        .block_on(frame::read_frame(&mut rewired, LIMIT))
        .expect("re-read");
    assert_eq!(again, frame);

    let Ok((value, encoding)) = mixed::decode_message(&frame.payload) else {
        return;
    };
    if let Some(id) = frame::keep_alive_ping_id(&value) {
        let _ = frame::keep_alive_pong(id, encoding);
    }
    let encoded = mixed::encode_message(&value, encoding).expect("re-encode");
    match mixed::decode_message(&encoded) {
        Ok((again, again_encoding)) => {
            assert_eq!(again_encoding, encoding);
            assert!(
                tokenmanager_fuzz::same(&value, &again, false),
                "{value:?} != {again:?}"
            );
        }
        Err(e) => assert!(tokenmanager_fuzz::has_short_year(&value), "{e}: {value:?}"),
    }
});
