//! Injected faults: "the next N Graph calls matching this path prefix (and method) fail with this
//! status". Tests use them for one-off answers (429/503 with and without Retry-After, any other
//! status or body; graph-protocol.md §8, §10 item 13). Sustained throttling of a tenant or drive,
//! with penalties for ignoring Retry-After, is [`crate::throttle`].

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
}
