//! Constructors for the generated messages that are tedious to fill in by hand (oneofs,
//! enums as `i32`).

use crate::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, compare, request_op,
};

impl Compare {
    /// The key's version (changes since its creation; 0 while it does not exist) compared
    /// to `version`.
    pub fn version(key: impl Into<Vec<u8>>, result: compare::CompareResult, version: i64) -> Self {
        Self::on(
            key,
            result,
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(version),
        )
    }

    /// The key's create revision (0 while it does not exist) compared to `revision`.
    pub fn create_revision(
        key: impl Into<Vec<u8>>,
        result: compare::CompareResult,
        revision: i64,
    ) -> Self {
        Self::on(
            key,
            result,
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(revision),
        )
    }

    /// The key's last modification revision (0 while it does not exist) compared to
    /// `revision`.
    pub fn mod_revision(
        key: impl Into<Vec<u8>>,
        result: compare::CompareResult,
        revision: i64,
    ) -> Self {
        Self::on(
            key,
            result,
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(revision),
        )
    }

    fn on(
        key: impl Into<Vec<u8>>,
        result: compare::CompareResult,
        target: compare::CompareTarget,
        value: compare::TargetUnion,
    ) -> Self {
        Self {
            result: result.into(),
            target: target.into(),
            key: key.into(),
            target_union: Some(value),
        }
    }
}

impl PutRequest {
    /// Sets `key` to `value`, attached to no lease.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
}

impl RequestOp {
    /// Reads one key.
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        Self::with(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        }))
    }

    /// Sets `key` to `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self::with(request_op::Request::RequestPut(PutRequest::new(key, value)))
    }

    /// Deletes every key from `key` up to (not including) `range_end`; an empty
    /// `range_end` deletes `key` alone.
    pub fn delete_range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        Self::with(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
            },
        ))
    }

    fn with(request: request_op::Request) -> Self {
        Self {
            request: Some(request),
        }
    }
}

/// The `range_end` that makes a range (or watch, or delete) cover every key starting with
/// `prefix`: the prefix with its last byte below 0xff incremented and what follows dropped;
/// `[0]` (every key) when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_last_incrementable_byte_is_bumped() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }
}
