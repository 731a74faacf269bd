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

/// Exactly `2 * len` hex digits, either case: no sign, space or anything else that a
/// lenient number parser would let through (`u8::from_str_radix` takes "+f").
fn hex(s: &str, len: usize) -> Option<Vec<u8>> {
    if s.len() != 2 * len {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `verify_with` for one algorithm: (key, body, signature) -> matches.
type Verifier = fn(&[u8], &[u8], &[u8]) -> bool;

fn verify_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], body: &[u8], sig: &[u8]) -> bool {
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(sig).is_ok()
}

/// Checks `header` (the X-Signature value) against the raw `body`. The header is
/// what notification-controller writes, `<algorithm>=<hex digest>`, and nothing
/// else: the digest in hex of either case and of exactly the algorithm's length,
/// nothing around either part (HTTP already took the spaces around the whole value).
pub fn verify(key: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let (alg, sig) = header.split_once('=').ok_or(SignatureError::Malformed)?;
    let (verify, len): (Verifier, usize) = match alg.to_ascii_lowercase().as_str() {
        "sha224" => (verify_with::<Hmac<Sha224>>, 28),
        "sha256" => (verify_with::<Hmac<Sha256>>, 32),
        "sha384" => (verify_with::<Hmac<Sha384>>, 48),
        "sha512" => (verify_with::<Hmac<Sha512>>, 64),
        _ => return Err(SignatureError::Algorithm),
    };
    let sig = hex(sig, len).ok_or(SignatureError::Malformed)?;
    if verify(key, body, &sig) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(rel: &str) -> Vec<u8> {
        crate::mapping::fixture(&format!("v2/{rel}"))
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

    /// Only `<algorithm>=<digest in hex>`: every other way of writing the right
    /// digest is refused as malformed, before any MAC is computed.
    #[test]
    fn hex_is_parsed_strictly() {
        let digest_of = |body: &[u8]| {
            let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(b"k").unwrap();
            mac.update(body);
            mac.finalize().into_bytes()
        };
        // A body whose digest has a byte below 0x10, whose hex starts with a 0.
        let (body, digest) = (0..)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .map(|body| {
                let digest = digest_of(&body);
                (body, digest)
            })
            .find(|(_, d)| d.iter().any(|b| *b < 0x10))
            .unwrap();
        let body = body.as_slice();
        let sig: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(verify(b"k", body, Some(&format!("sha256={sig}"))), Ok(()));
        let upper = sig.to_ascii_uppercase();
        assert_eq!(verify(b"k", body, Some(&format!("sha256={upper}"))), Ok(()));
        // `u8::from_str_radix` reads "+f" as 15: a sign in place of that leading 0.
        let signed: String = digest
            .iter()
            .map(|b| {
                if *b < 0x10 {
                    format!("+{b:x}")
                } else {
                    format!("{b:02x}")
                }
            })
            .collect();
        for bad in [
            format!("sha256= {sig}"),
            format!("sha256 ={sig}"),
            format!(" sha256={sig}"),
            format!("sha256={sig} "),
            format!("sha256={sig}\t"),
            format!("sha256={sig}00"),
            format!("sha256={sig}0"),
            format!("sha256=00{sig}"),
            format!("sha256={}", &sig[..62]),
            format!("sha256=0x{}", &sig[2..]),
            format!("sha256=sha256={sig}"),
            format!("sha256={sig},sha256={sig}"),
            format!("sha256={}", sig.replacen(&sig[..1], "é", 1)),
            format!("sha256={}", &sig[..32]),
            format!("sha256={signed}"),
            "sha256=".to_string(),
        ] {
            let got = verify(b"k", body, Some(&bad));
            assert!(
                matches!(got, Err(SignatureError::Malformed | SignatureError::Algorithm)),
                "{bad:?}: {got:?}"
            );
        }
    }
}
