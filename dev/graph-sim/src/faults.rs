//! Injected faults: "the next N Graph calls matching this path prefix (and method) fail with this
//! status", optionally after a real-time delay. Tests use them for one-off answers (429/503 with
//! and without Retry-After, any other status or body, a slow failure; graph-protocol.md §8, §10
//! item 13). Sustained throttling of a tenant or drive, with penalties for ignoring Retry-After,
//! is [`crate::throttle`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One fault rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Matched against the request path, e.g. `/v1.0/subscriptions`.
    pub path_prefix: String,
    /// Only this HTTP method (any when absent), compared case-insensitively.
    #[serde(default)]
    pub method: Option<String>,
    /// The status to answer with.
    pub status: u16,
    /// How many matching calls fail; the rule is removed after the last one.
    #[serde(default = "one")]
    pub count: u32,
    /// Seconds for a `Retry-After` header.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// A body to send verbatim instead of Graph's error envelope.
    #[serde(default)]
    pub body: Option<Value>,
    /// Real milliseconds to wait before sending the faulted answer (none when absent), e.g. a 503
    /// that also takes 5 s. No lock is held while waiting, so other calls go on meanwhile. It
    /// comes on top of any [`crate::Latency`].
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl Fault {
    fn matches(&self, method: &str, path: &str) -> bool {
        path.starts_with(&self.path_prefix)
            && self
                .method
                .as_deref()
                .is_none_or(|wanted| wanted.eq_ignore_ascii_case(method))
    }
}

/// Uses up one count of the oldest rule matching the call, if any.
pub fn take_matching(faults: &mut Vec<Fault>, method: &str, path: &str) -> Option<Fault> {
    let index = faults
        .iter()
        .position(|fault| fault.count > 0 && fault.matches(method, path))?;
    let fault = faults.get_mut(index)?;
    fault.count -= 1;
    let taken = fault.clone();
    if fault.count == 0 {
        faults.remove(index);
    }
    Some(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(method: Option<&str>, count: u32) -> Fault {
        Fault {
            path_prefix: "/v1.0/subscriptions".to_owned(),
            method: method.map(str::to_owned),
            status: 503,
            count,
            retry_after: None,
            body: None,
            delay_ms: None,
        }
    }

    #[test]
    fn a_fault_fires_count_times_on_matching_calls_only() {
        let mut faults = vec![fault(Some("patch"), 2)];
        assert!(take_matching(&mut faults, "POST", "/v1.0/subscriptions").is_none());
        assert!(take_matching(&mut faults, "PATCH", "/v1.0/me/drive").is_none());
        assert!(take_matching(&mut faults, "PATCH", "/v1.0/subscriptions/abc").is_some());
        assert!(take_matching(&mut faults, "PATCH", "/v1.0/subscriptions/abc").is_some());
        assert!(take_matching(&mut faults, "PATCH", "/v1.0/subscriptions/abc").is_none());
        assert!(faults.is_empty());
    }

    #[test]
    fn a_fault_without_a_delay_reads_as_none_and_one_with_it_keeps_it() {
        let plain: Fault = serde_json::from_str(r#"{"path_prefix":"/v1.0/","status":503}"#).expect("fault");
        assert_eq!((plain.count, plain.delay_ms), (1, None));
        let slow: Fault =
            serde_json::from_str(r#"{"path_prefix":"/v1.0/","status":503,"delay_ms":250}"#).expect("fault");
        assert_eq!(slow.delay_ms, Some(250));
    }
}
