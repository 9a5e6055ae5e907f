//! Signature verification: `security == md5_hex(callId + secret + timestamp)`.
//!
//! Pure and constant-time. Several secrets per appkey are tried (rotation, or
//! several Easemob callback rules with different secrets); `"*"` covers
//! appkeys that are not listed. The signature covers only `callId` and
//! `timestamp`, so replays are stopped by deduplication and `max_event_age`.

use std::time::Duration;

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use crate::callback::Callback;
use crate::config::Secrets;

/// Why a callback is not authentic. Every variant answers 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("unknown appkey")]
    UnknownAppkey,
    #[error("bad signature")]
    BadSignature,
    #[error("event too old")]
    TooOld,
}

/// The signature Easemob computes: 32 lowercase hex characters.
pub fn sign(call_id: &str, secret: &str, timestamp_text: &str) -> String {
    hex::encode(digest(call_id, secret, timestamp_text))
}

/// The MD5 digest behind [`sign`].
fn digest(call_id: &str, secret: &str, timestamp_text: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(call_id.as_bytes());
    h.update(secret.as_bytes());
    h.update(timestamp_text.as_bytes());
    h.finalize().into()
}

/// Check a callback's signature and age. `now_ms` is the current time in
/// milliseconds since the epoch.
pub fn check(
    cb: &Callback,
    secrets: &Secrets,
    max_age: Option<Duration>,
    now_ms: u64,
) -> Result<(), VerifyError> {
    let candidates = secrets
        .for_appkey(cb.signing_appkey())
        .ok_or(VerifyError::UnknownAppkey)?;
    // The digests are compared, not their hex: hex is case-insensitive, and
    // what is not 32 hex digits can match no digest. The comparison itself
    // is constant-time.
    let mut given = [0u8; 16];
    if hex::decode_to_slice(&cb.security, &mut given).is_err() {
        return Err(VerifyError::BadSignature);
    }
    let mut ok = subtle::Choice::from(0);
    for secret in candidates {
        let expected = digest(&cb.call_id, secret.expose(), &cb.timestamp_text);
        ok |= expected.ct_eq(&given);
    }
    if !bool::from(ok) {
        return Err(VerifyError::BadSignature);
    }
    if let Some(max) = max_age {
        let age = now_ms.saturating_sub(cb.timestamp);
        if u128::from(age) > max.as_millis() {
            return Err(VerifyError::TooOld);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cb(security: &str, ts: serde_json::Value) -> Callback {
        Callback::from_value(json!({"callId": "org#app_966725184268539960", "security": security,
            "timestamp": ts, "appkey": "org#app", "chat_type": "roster", "payload": {"operation": "ban"}}))
        .unwrap()
    }

    #[test]
    fn known_vector() {
        // md5("org#app_966725184268539960" + "secret" + "1642648046912"), computed independently.
        assert_eq!(
            sign("org#app_966725184268539960", "secret", "1642648046912"),
            {
                let mut h = Md5::new();
                h.update(b"org#app_966725184268539960secret1642648046912");
                hex::encode(h.finalize())
            }
        );
        assert_eq!(sign("", "", ""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(sign("a", "b", "c"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn accepts_good_rotated_uppercase_and_string_timestamp() {
        let secrets = Secrets::from_pairs([("org#app", "old"), ("org#app", "new")]);
        let good = sign("org#app_966725184268539960", "new", "1642648046912");
        assert_eq!(
            check(&cb(&good, json!(1642648046912u64)), &secrets, None, 0),
            Ok(())
        );
        assert_eq!(
            check(
                &cb(&good.to_uppercase(), json!(1642648046912u64)),
                &secrets,
                None,
                0
            ),
            Ok(())
        );
        assert_eq!(
            check(&cb(&good, json!("1642648046912")), &secrets, None, 0),
            Ok(())
        );
        let old = sign("org#app_966725184268539960", "old", "1642648046912");
        assert_eq!(
            check(&cb(&old, json!(1642648046912u64)), &secrets, None, 0),
            Ok(())
        );
    }

    #[test]
    fn refuses_bad_signature_unknown_appkey_and_old_events() {
        let secrets = Secrets::from_pairs([("org#app", "secret")]);
        let good = sign("org#app_966725184268539960", "secret", "1642648046912");
        assert_eq!(
            check(&cb(&good, json!(1642648046913u64)), &secrets, None, 0),
            Err(VerifyError::BadSignature)
        );
        // Not 32 hex digits: too short, too long, or one digit that is not one.
        let mut not_hex = good.clone();
        not_hex.replace_range(31.., "g");
        for given in ["short", &format!("{good}00"), &not_hex] {
            assert_eq!(
                check(&cb(given, json!(1642648046912u64)), &secrets, None, 0),
                Err(VerifyError::BadSignature),
                "{given}"
            );
        }
        let other = Secrets::from_pairs([("other#app", "secret")]);
        assert_eq!(
            check(&cb(&good, json!(1642648046912u64)), &other, None, 0),
            Err(VerifyError::UnknownAppkey)
        );
        let star = Secrets::from_pairs([("*", "secret")]);
        assert_eq!(
            check(&cb(&good, json!(1642648046912u64)), &star, None, 0),
            Ok(())
        );
        let max = Some(Duration::from_secs(60));
        let ts = 1642648046912u64;
        assert_eq!(
            check(&cb(&good, json!(ts)), &secrets, max, ts + 60_000),
            Ok(())
        );
        assert_eq!(
            check(&cb(&good, json!(ts)), &secrets, max, ts + 60_001),
            Err(VerifyError::TooOld)
        );
    }
}
