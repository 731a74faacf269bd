//! Decoding an event body.

use serde::Deserialize;

/// `serde_json::from_slice`, with the same result, for less: a body that is UTF-8
/// (every real one) is checked once as a whole, where `from_slice` checks every
/// string and key on its own (2–3% of an event's instructions). Any other
/// body goes to `from_slice`, which decides what it is.
pub fn from_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

/// A field kept only when it is a string, for what an event shows but nothing
/// depends on (a time): a value of another type is none, never a refused event.
pub fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn same_answer_as_from_slice() {
        let bodies: [&[u8]; 7] = [
            br#"{"type":"sync","metadata":{"commits":[]}}"#,
            "{\"message\":\"d\u{e9}ploy\u{e9} \u{2713}\"}".as_bytes(),
            br#"{"a":"\ud83d\ude00","b":[1,2.5e3,null,true]}"#,
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1,\"ignored\":\"\xc3\"}",
            br#"{"a":"#,
            b"\xef\xbb\xbf{}",
        ];
        for body in bodies {
            let ours = from_body::<Value>(body).map_err(|e| e.to_string());
            let slice = serde_json::from_slice::<Value>(body).map_err(|e| e.to_string());
            assert_eq!(ours, slice, "{}", String::from_utf8_lossy(body));
        }
    }
}
