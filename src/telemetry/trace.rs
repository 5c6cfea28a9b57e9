//! W3C trace context (`traceparent`): carried from an API request into its job, into the events an execution
//! emits and into outgoing webhooks, so one trace id follows a business process across processes.

use std::fmt;

use rand::Rng;

/// A parsed `traceparent` header (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` when it is not a valid version-00 traceparent (the W3C rule: an invalid
    /// header is ignored, never an error).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let lower_hex =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        if !lower_hex(version, 2) || version == "ff" {
            return None;
        }
        let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; a later version may append more, read as 00 from its first four.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The same trace with a new span id: what a hop (an emitted event, a webhook request) sends onwards.
    pub fn child(&self) -> TraceParent {
        let mut rng = rand::thread_rng();
        let mut parent_id = 0;
        while parent_id == 0 {
            parent_id = rng.gen();
        }
        TraceParent { parent_id, ..*self }
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// The child of a stored traceparent string, if it parses.
pub fn child_of(stored: Option<&str>) -> Option<String> {
    stored.and_then(TraceParent::parse).map(|t| t.child().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_example() {
        let t = TraceParent::parse(SAMPLE).expect("valid");
        assert_eq!(t.to_string(), SAMPLE);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_changes_the_span() {
        let t = TraceParent::parse(SAMPLE).expect("valid");
        let c = t.child();
        assert_eq!(c.trace_id(), t.trace_id());
        assert_ne!(c.to_string(), t.to_string());
        assert!(c.to_string().ends_with("-01"));
        assert_eq!(TraceParent::parse(&c.to_string()), Some(c));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version's extra fields are tolerated.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_some());
    }
}
