//! Objects: upload (raw and multipart, streamed), download (ranges, conditional),
//! info, list (v1 folders and v2 cursor pages), remove, move, copy.
//!
//! Consistency: bytes are written to a fresh key (`objects/<new version>`) first; the row
//! is then inserted or switched to that version in one transaction, under an advisory
//! lock on (bucket, name) so concurrent writers of one key serialize; only after the
//! commit are the previous version's bytes deleted. A failed or rejected upload deletes
//! its own key, and the sweeper removes keys no row points at (a crash in between).

mod copy_move;
mod list;
mod remove;
mod rules;
mod serve;
mod write;

pub use copy_move::*;
pub use list::*;
pub use remove::*;
pub use rules::*;
pub use serve::*;
pub use write::*;

#[cfg(test)]
mod tests {
    use super::write::cache_control_from;
    use super::*;
    use crate::storage::endpoint::ObjectRef;

    #[test]
    fn mime_wildcards() {
        let l = Some(vec!["image/*".to_string(), "text/plain".to_string()]);
        assert!(mime_allowed(&l, "image/png"));
        assert!(mime_allowed(&l, "text/plain;charset=UTF-8"));
        assert!(!mime_allowed(&l, "application/pdf"));
        assert!(!mime_allowed(&l, "imagex/png"));
        assert!(mime_allowed(&None, "anything/at-all"));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100).unwrap(), Some(0..10));
        assert_eq!(parse_range(Some("bytes=90-"), 100).unwrap(), Some(90..100));
        assert_eq!(parse_range(Some("bytes=-5"), 100).unwrap(), Some(95..100));
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100).unwrap(),
            Some(50..100)
        );
        assert!(parse_range(Some("bytes=100-"), 100).is_err());
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100).unwrap(), None);
        assert_eq!(parse_range(Some("items=0-1"), 100).unwrap(), None);
        // An end of u64::MAX (found by the range fuzz target) is the end of the object.
        assert_eq!(
            parse_range(Some("bytes=5-18446744073709551615"), 100).unwrap(),
            Some(5..100)
        );
        assert_eq!(parse_range(None, 100).unwrap(), None);
    }

    #[test]
    fn active_types_are_not_passive() {
        for t in [
            "image/png",
            "IMAGE/JPEG",
            "image/webp; q=1",
            "text/plain; charset=utf-8",
            "application/pdf",
            "video/mp4",
            "application/octet-stream",
        ] {
            assert!(is_passive(t), "{t}");
        }
        for t in [
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/xml",
            "text/javascript",
            "application/javascript",
            "application/x-shockwave-flash",
            "image/png,text/html",
            "image/png text/html",
            "",
            "nonsense",
            "text/",
        ] {
            assert!(!is_passive(t), "{t}");
        }
    }

    #[test]
    fn cache_control_values() {
        assert_eq!(cache_control_from(Some("max-age=3600")), "max-age=3600");
        assert_eq!(cache_control_from(Some("3600")), "max-age=3600");
        assert_eq!(cache_control_from(None), "no-cache");
        assert_eq!(cache_control_from(Some("max-age=x")), "no-cache");
    }

    #[test]
    fn disposition_is_header_safe() {
        let o = ObjectRef {
            bucket: "b".into(),
            name: "dir/a b.txt".into(),
        };
        assert_eq!(
            content_disposition("", &o),
            "attachment; filename=a%20b.txt; filename*=UTF-8''a%20b.txt"
        );
        assert!(!content_disposition("x\"\r\ny", &o).contains('\n'));
    }
}
