//! The fuzz targets' view of the service: DIRAC's wire codecs, compiled straight from the
//! service's source tree. The codec module depends on nothing else in the service, so fuzzing
//! it does not build the whole service (diesel, actix, openssl) with sanitizers.

#[path = "../../src/protocol/dirac/codec/mod.rs"]
pub mod codec;
