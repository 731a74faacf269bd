//! `generic-hmac`: notification-controller signs the raw body with the Provider's
//! key and sends `X-Signature: <algorithm>=<hex>`.

use hmac::{Hmac, Mac};
use sha2::{Sha224, Sha256, Sha384, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Signature header")]
    Missing,
    #[error("X-Signature is not <algorithm>=<hex>")]
    Malformed,
    #[error("unsupported signature algorithm (sha224, sha256, sha384, sha512)")]
    Algorithm,
    #[error("signature does not match the body")]
    Mismatch,
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn verify_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], body: &[u8], sig: &[u8]) -> bool {
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(sig).is_ok()
}

/// Checks `header` (the X-Signature value) against the raw `body`; hex in either case.
pub fn verify(key: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let (alg, sig) = header.split_once('=').ok_or(SignatureError::Malformed)?;
    let sig = hex(sig.trim()).ok_or(SignatureError::Malformed)?;
    let ok = match alg.trim().to_ascii_lowercase().as_str() {
        "sha224" => verify_with::<Hmac<Sha224>>(key, body, &sig),
        "sha256" => verify_with::<Hmac<Sha256>>(key, body, &sig),
        "sha384" => verify_with::<Hmac<Sha384>>(key, body, &sig),
        "sha512" => verify_with::<Hmac<Sha512>>(key, body, &sig),
        _ => return Err(SignatureError::Algorithm),
    };
    if ok { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(rel: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/v2/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn upstream_test_vector() {
        let v: Value =
            serde_json::from_slice(&fixture("upstream-tests/forwarder-test-hmac-vector.json")).unwrap();
        let body = fixture("upstream-tests/forwarder-test-hmac-body.json");
        let key = v["hmacKey"].as_str().unwrap().as_bytes();
        let sig = v["expectedHeaders"]["X-Signature"].as_str().unwrap();
        assert_eq!(verify(key, &body, Some(sig)), Ok(()));
        assert_eq!(
            verify(
                key,
                &body,
                Some(&sig.to_ascii_uppercase().replace("SHA256", "sha256"))
            ),
            Ok(())
        );
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert_eq!(verify(key, &tampered, Some(sig)), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(b"other key", &body, Some(sig)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn every_forwarded_fixture_signature() {
        let sigs: Value = serde_json::from_slice(&fixture("forwarded/signatures.json")).unwrap();
        let key = sigs["key"]
            .as_str()
            .or(sigs["hmacKey"].as_str())
            .unwrap_or("flux-fixture-hmac-key");
        let files = sigs["files"].as_object().unwrap();
        assert!(files.len() >= 13);
        for (name, headers) in files {
            let body = fixture(&format!("forwarded/{name}"));
            assert_eq!(
                verify(key.as_bytes(), &body, headers["X-Signature"].as_str()),
                Ok(()),
                "{name}"
            );
        }
    }

    #[test]
    fn other_algorithms_and_bad_headers() {
        let body = b"{}";
        let mut mac = <Hmac<Sha512> as hmac::digest::KeyInit>::new_from_slice(b"k").unwrap();
        mac.update(body);
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(verify(b"k", body, Some(&format!("sha512={sig}"))), Ok(()));
        assert_eq!(verify(b"k", body, None), Err(SignatureError::Missing));
        assert_eq!(verify(b"k", body, Some("sha256")), Err(SignatureError::Malformed));
        assert_eq!(
            verify(b"k", body, Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(verify(b"k", body, Some("md5=00")), Err(SignatureError::Algorithm));
    }
}
