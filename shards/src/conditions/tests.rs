use super::*;

const TAG: Etag = Etag(0x0123_4567_89ab_cdef);

fn check(if_match: Option<&str>, if_none_match: Option<&str>, current: Option<Etag>, safe: bool, expect: Verdict) {
    let conditions = Conditions {
        if_match: if_match.map(|v| TagList::parse(v.as_bytes())),
        if_none_match: if_none_match.map(|v| TagList::parse(v.as_bytes())),
    };
    assert_eq!(
        conditions.evaluate(current, safe),
        expect,
        "If-Match {if_match:?} If-None-Match {if_none_match:?} current {current:?} safe {safe}"
    );
}

#[test]
fn encode_and_display_agree() {
    assert_eq!(&TAG.encode(), b"\"0123456789abcdef\"");
    assert_eq!(TAG.to_string().as_bytes(), &TAG.encode());
}

#[test]
fn etag_depends_on_content_type_and_value() {
    let a = Etag::of(b"text/plain", b"hello");
    assert_eq!(a, Etag::of(b"text/plain", b"hello"));
    assert_ne!(a, Etag::of(b"application/json", b"hello"));
    assert_ne!(a, Etag::of(b"text/plain", b"hellp"));
    // The separator keeps boundary shifts apart.
    assert_ne!(Etag::of(b"ab", b"c"), Etag::of(b"a", b"bc"));
}

#[test]
fn if_match() {
    let tag = "\"0123456789abcdef\"";
    check(Some(tag), None, Some(TAG), false, Verdict::Proceed);
    check(Some("\"x\", \"0123456789abcdef\""), None, Some(TAG), false, Verdict::Proceed);
    check(Some(tag), None, Some(Etag(1)), false, Verdict::Failed);
    check(Some(tag), None, None, false, Verdict::Failed);
    check(Some("*"), None, Some(TAG), false, Verdict::Proceed);
    check(Some("*"), None, None, false, Verdict::Failed);
    // Strong comparison: a weak tag never satisfies If-Match.
    check(Some("W/\"0123456789abcdef\""), None, Some(TAG), false, Verdict::Failed);
    // Upper-case hex is not a tag we issue.
    check(Some("\"0123456789ABCDEF\""), None, Some(TAG), false, Verdict::Failed);
    check(Some("garbage"), None, Some(TAG), true, Verdict::Failed);
}

#[test]
fn if_none_match() {
    let tag = "\"0123456789abcdef\"";
    check(None, Some(tag), Some(TAG), true, Verdict::NotModified);
    check(None, Some(tag), Some(TAG), false, Verdict::Failed);
    check(None, Some("W/\"0123456789abcdef\""), Some(TAG), true, Verdict::NotModified);
    check(None, Some(tag), Some(Etag(2)), true, Verdict::Proceed);
    check(None, Some(tag), None, true, Verdict::Proceed);
    check(None, Some("*"), None, false, Verdict::Proceed);
    check(None, Some("*"), Some(TAG), false, Verdict::Failed);
    check(None, Some(" * "), Some(TAG), true, Verdict::NotModified);
}

#[test]
fn if_match_is_evaluated_first() {
    check(Some("\"0000000000000000\""), Some("*"), Some(TAG), true, Verdict::Failed);
    check(Some("*"), Some("\"0123456789abcdef\""), Some(TAG), true, Verdict::NotModified);
}

#[test]
fn long_lists_are_bounded() {
    let many = vec!["\"0000000000000000\""; TAG_LIST_ENTRIES_MAX * 4].join(",");
    match TagList::parse(many.as_bytes()) {
        TagList::Tags(tags) => assert_eq!(tags.len(), TAG_LIST_ENTRIES_MAX),
        TagList::Any => panic!("not Any"),
    }
}
