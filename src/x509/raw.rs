//! The libcrypto calls openssl-rs does not wrap. Every `unsafe` block of the module outside the
//! tests lives here.

use std::ffi::{CStr, c_char, c_int};

use foreign_types_shared::{ForeignType, ForeignTypeRef};
use openssl::asn1::{Asn1ObjectRef, Asn1OctetStringRef};
use openssl::error::ErrorStack;
use openssl::x509::{X509Name, X509NameRef, X509Ref};

unsafe extern "C" {
    // Stable libcrypto API (present since SSLeay), missing from openssl-sys.
    fn X509_NAME_oneline(
        name: *const openssl_sys::X509_NAME,
        buf: *mut c_char,
        size: c_int,
    ) -> *mut c_char;
}

/// `X509_NAME_oneline(name, NULL, 0)`: the DN format DIRAC (M2Crypto's `str(X509_Name)`) uses.
/// `None` only when libcrypto fails (allocation, or a name beyond its 1 MiB limit).
pub(super) fn name_oneline(name: &X509NameRef) -> Option<String> {
    // SAFETY: `name` is a valid X509_NAME for the call; with a NULL buffer libcrypto returns a
    // NUL-terminated string it allocated (or NULL), which we copy and release with OPENSSL_free.
    unsafe {
        let line = X509_NAME_oneline(name.as_ptr(), std::ptr::null_mut(), 0);
        if line.is_null() {
            return None;
        }
        let text = CStr::from_ptr(line).to_string_lossy().into_owned();
        openssl_sys::OPENSSL_free(line.cast());
        Some(text)
    }
}

/// The value (content of extnValue) of the first extension with this OID, as DIRAC's
/// `retrieveExtension` takes it.
pub(super) fn extension_value(cert: &X509Ref, oid: &Asn1ObjectRef) -> Option<Vec<u8>> {
    // SAFETY: both pointers are valid for the call; the extension and its data are owned by
    // `cert`, which outlives the copy made here.
    unsafe {
        let index = openssl_sys::X509_get_ext_by_OBJ(cert.as_ptr(), oid.as_ptr(), -1);
        if index < 0 {
            return None;
        }
        let extension = openssl_sys::X509_get_ext(cert.as_ptr(), index);
        if extension.is_null() {
            return None;
        }
        let data = openssl_sys::X509_EXTENSION_get_data(extension);
        if data.is_null() {
            return None;
        }
        Some(Asn1OctetStringRef::from_ptr(data).as_slice().to_vec())
    }
}

/// Appends `field=value` to `name`, either as a new RDN or as one more member of the last RDN
/// (a multi-valued RDN, which `X509NameBuilder` cannot make).
pub(super) fn append_name_entry(
    name: &mut X509Name,
    field: &CStr,
    value: &str,
    add_to_last_rdn: bool,
) -> Result<(), ErrorStack> {
    let len = c_int::try_from(value.len()).map_err(|_| ErrorStack::get())?;
    // SAFETY: `name` is exclusively borrowed, `field` is NUL-terminated and `value` is passed
    // with its length; libcrypto copies both.
    let ok = unsafe {
        openssl_sys::X509_NAME_add_entry_by_txt(
            name.as_ptr(),
            field.as_ptr(),
            openssl_sys::MBSTRING_UTF8,
            value.as_ptr(),
            len,
            -1,
            if add_to_last_rdn { -1 } else { 0 },
        )
    };
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}
