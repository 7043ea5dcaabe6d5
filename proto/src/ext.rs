//! Small hand-written conveniences on the generated types: constructors for
//! the collector's replies and a check of a batch's column shape that both
//! sides share.

use crate::v1::{Ack, Batch, CollectorMessage, Error, ErrorCode, collector_message};

impl CollectorMessage {
    /// An acknowledgement that every batch up to `seq` is durable.
    pub fn ack(seq: u64) -> Self {
        CollectorMessage {
            kind: Some(collector_message::Kind::Ack(Ack { seq })),
        }
    }

    /// A typed error about batch `seq` (0 if it concerns the stream).
    pub fn error(code: ErrorCode, message: impl Into<String>, seq: u64, fatal: bool) -> Self {
        CollectorMessage {
            kind: Some(collector_message::Kind::Error(Error {
                code: code as i32,
                message: message.into(),
                seq,
                fatal,
            })),
        }
    }
}

impl Batch {
    /// Checks that the sample columns line up; returns a description of the
    /// first inconsistency.
    pub fn check_columns(&self) -> Result<(), String> {
        if self.values.len() != self.refs.len() {
            return Err(format!(
                "batch {}: {} values for {} refs",
                self.seq,
                self.values.len(),
                self.refs.len()
            ));
        }
        if !self.timestamp_deltas_ms.is_empty() && self.timestamp_deltas_ms.len() != self.refs.len() {
            return Err(format!(
                "batch {}: {} timestamp deltas for {} refs",
                self.seq,
                self.timestamp_deltas_ms.len(),
                self.refs.len()
            ));
        }
        Ok(())
    }

    /// Timestamp of sample `i` in milliseconds since the epoch.
    pub fn timestamp_of(&self, i: usize) -> i64 {
        let delta = self.timestamp_deltas_ms.get(i).copied().unwrap_or(0);
        self.base_timestamp_ms.saturating_add(delta)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_columns_are_named() {
        let batch = Batch {
            seq: 7,
            refs: vec![1, 2],
            values: vec![1.0],
            ..Default::default()
        };
        let err = batch.check_columns().unwrap_err();
        assert_eq!(err, "batch 7: 1 values for 2 refs");
    }

    #[test]
    fn timestamps_default_to_base() {
        let batch = Batch {
            base_timestamp_ms: 1000,
            refs: vec![1, 2],
            values: vec![1.0, 2.0],
            timestamp_deltas_ms: vec![],
            ..Default::default()
        };
        assert!(batch.check_columns().is_ok());
        assert_eq!(batch.timestamp_of(1), 1000);
    }
}
