//! What file-upload accepts: an allow-list of types, each checked against the content's own
//! bytes. Binary types (images, PDF) must start with their signature; text types (plain
//! text, Markdown, CSV, JSON, source files) must be valid UTF-8 without NUL bytes (checked
//! over the whole stream by [`TextCheck`]). The claimed type comes from the file name's
//! extension, else the part's declared Content-Type, else the signature itself.
//!
//! Storage reuses [`contradicts`] for uploads to buckets with a MIME allow-list: markup or
//! another kind of file declared as an image is refused there.

/// How a type's content is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Binary,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileType {
    pub mime: &'static str,
    pub kind: Kind,
}

const fn bin(mime: &'static str) -> FileType {
    FileType {
        mime,
        kind: Kind::Binary,
    }
}
const fn text(mime: &'static str) -> FileType {
    FileType {
        mime,
        kind: Kind::Text,
    }
}

/// Extension (lower case) → type. Every MIME type here is in the chat-files bucket's list.
const BY_EXTENSION: &[(&str, FileType)] = &[
    ("png", bin("image/png")),
    ("jpg", bin("image/jpeg")),
    ("jpeg", bin("image/jpeg")),
    ("gif", bin("image/gif")),
    ("webp", bin("image/webp")),
    ("pdf", bin("application/pdf")),
    ("txt", text("text/plain")),
    ("text", text("text/plain")),
    ("log", text("text/plain")),
    ("md", text("text/markdown")),
    ("markdown", text("text/markdown")),
    ("csv", text("text/csv")),
    ("json", text("application/json")),
    ("py", text("text/x-python")),
    ("js", text("text/javascript")),
    ("mjs", text("text/javascript")),
    ("cjs", text("text/javascript")),
    ("jsx", text("text/javascript")),
    ("ts", text("text/typescript")),
    ("tsx", text("text/typescript")),
    ("html", text("text/html")),
    ("htm", text("text/html")),
    ("css", text("text/css")),
    ("rs", text("text/x-rust")),
    ("c", text("text/x-c")),
    ("h", text("text/x-c")),
    ("cc", text("text/x-c")),
    ("cpp", text("text/x-c")),
    ("hpp", text("text/x-c")),
    ("java", text("text/x-java")),
    ("go", text("text/x-go")),
    ("sh", text("application/x-sh")),
    ("bash", text("application/x-sh")),
    // Other source and config files are stored as plain text.
    ("sql", text("text/plain")),
    ("yaml", text("text/plain")),
    ("yml", text("text/plain")),
    ("toml", text("text/plain")),
    ("rb", text("text/plain")),
    ("php", text("text/plain")),
    ("kt", text("text/plain")),
    ("swift", text("text/plain")),
    ("cs", text("text/plain")),
    ("xml", text("text/plain")),
];

/// The allowed binary type whose signature `head` starts with (sniffed by `infer`).
pub fn signature(head: &[u8]) -> Option<&'static str> {
    let mime = infer::get(head)?.mime_type();
    by_mime(mime)
        .filter(|t| t.kind == Kind::Binary)
        .map(|t| t.mime)
}

/// How many leading bytes [`contradicts`] looks at.
pub const SNIFF_BYTES: usize = 4096;

/// Markup a browser could run as a document: HTML, SVG, XML (XHTML, XSLT) or a script tag.
/// Leading whitespace and a UTF-8 BOM are skipped; a `<` at the start of something that
/// claims to be an image is markup, and these tags are looked for anywhere in `head`.
pub fn looks_like_markup(head: &[u8]) -> bool {
    let start = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let first = start.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'<') {
        return true;
    }
    const TAGS: &[&[u8]] = &[
        b"<html",
        b"<!doctype",
        b"<script",
        b"<svg",
        b"<?xml",
        b"<iframe",
        b"<body",
        b"<head",
        b"<object",
        b"<embed",
        b"<meta",
        b"<xsl",
        b"<math",
    ];
    head.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'<'
            && TAGS
                .iter()
                .any(|t| head.len() >= i + t.len() && head[i..i + t.len()].eq_ignore_ascii_case(t))
    })
}

/// For an upload declared as an image (other than SVG, which is markup itself): whether its
/// first bytes clearly say otherwise, and what they are. Only a recognised non-image
/// signature or markup counts; unknown bytes and another image format are not a
/// contradiction (clients routinely label a JPEG `image/png`). Other declared types are
/// never refused here: text and most other types cannot be told from their bytes.
pub fn contradicts(declared: &str, head: &[u8]) -> Option<String> {
    let essence = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !essence.starts_with("image/") || essence == "image/svg+xml" {
        return None;
    }
    match infer::get(head).map(|t| t.mime_type()) {
        Some(m) if m.starts_with("image/") && m != "image/svg+xml" => None,
        Some(m) => Some(m.to_string()),
        None if looks_like_markup(head) => Some("text/html".to_string()),
        None => None,
    }
}

fn extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

fn by_mime(essence: &str) -> Option<FileType> {
    BY_EXTENSION
        .iter()
        .map(|(_, t)| *t)
        .find(|t| t.mime == essence)
}

/// The accepted type of a file, or the reason it is refused (a sentence for the client).
/// `head` is the first bytes of the content (at least 12 unless the file is shorter).
pub fn classify(name: &str, declared: Option<&str>, head: &[u8]) -> Result<FileType, String> {
    let sniffed = signature(head);
    let claimed =
        match extension(name) {
            Some(ext) => BY_EXTENSION
                .iter()
                .find(|(e, _)| *e == ext)
                .map(|(_, t)| *t)
                .ok_or_else(|| format!("Files of type .{ext} are not accepted."))?,
            None => {
                let declared = declared
                    .map(|d| {
                        d.split(';')
                            .next()
                            .unwrap_or("")
                            .trim()
                            .to_ascii_lowercase()
                    })
                    .filter(|d| !d.is_empty() && d != "application/octet-stream");
                match (declared.as_deref().and_then(by_mime), sniffed) {
                    (Some(t), _) => t,
                    (None, Some(m)) => bin(m),
                    (None, None) => return Err(
                        "The file's type could not be determined; name it with a known extension."
                            .into(),
                    ),
                }
            }
        };
    match claimed.kind {
        Kind::Binary if sniffed != Some(claimed.mime) => Err(format!(
            "The file's content is not {} as its name or type claims.",
            claimed.mime
        )),
        Kind::Text if head.contains(&0) || !TextCheck::default().feed(head) => {
            Err(format!("The file's content is not {} text.", claimed.mime))
        }
        _ => Ok(claimed),
    }
}

/// Incremental check that a stream is UTF-8 without NUL bytes (a multi-byte character may
/// straddle chunks).
#[derive(Default)]
pub struct TextCheck {
    carry: Vec<u8>,
}

impl TextCheck {
    /// Feed the next chunk; false once the content is known not to be text.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        if chunk.contains(&0) {
            return false;
        }
        let joined;
        let data: &[u8] = if self.carry.is_empty() {
            chunk
        } else {
            let mut v = std::mem::take(&mut self.carry);
            v.extend_from_slice(chunk);
            joined = v;
            &joined
        };
        match std::str::from_utf8(data) {
            Ok(_) => true,
            // An incomplete character at the end: wait for the next chunk.
            Err(e) if e.error_len().is_none() => {
                self.carry = data[e.valid_up_to()..].to_vec();
                true
            }
            Err(_) => false,
        }
    }

    /// At the end of the stream: no character may be left unfinished.
    pub fn finish(&self) -> bool {
        self.carry.is_empty()
    }
}

/// The name stored in the object path: the last path component, only ASCII letters,
/// digits, `.`, `_` and `-` (anything else becomes `_`), no leading dot, at most 100
/// characters with the extension kept.
pub fn safe_name(name: &str) -> String {
    let mut s: String = display_name(name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s = s.trim_start_matches('.').to_string();
    while s.contains("..") {
        s = s.replace("..", ".");
    }
    let s = bound(&s, 100);
    if s.is_empty() || s.chars().all(|c| c == '_' || c == '.') {
        "file".into()
    } else {
        s
    }
}

/// The name recorded for the user: the last path component, control characters removed,
/// at most 255 characters (extension kept).
pub fn display_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let s: String = last.chars().filter(|c| !c.is_control()).collect();
    let s = bound(s.trim(), 255);
    if s.is_empty() {
        "file".into()
    } else {
        s
    }
}

/// At most `max` characters, keeping a short extension.
fn bound(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let ext = s
        .rsplit_once('.')
        .map(|(_, e)| e)
        .filter(|e| e.chars().count() <= 16)
        .unwrap_or("");
    let keep = max - ext.chars().count() - usize::from(!ext.is_empty());
    let mut out: String = s.chars().take(keep).collect();
    if !ext.is_empty() {
        out.push('.');
        out.push_str(ext);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn binary_types_need_their_signature() {
        assert_eq!(classify("a.png", None, PNG).unwrap().mime, "image/png");
        assert!(classify("a.png", Some("image/png"), b"hello world").is_err());
        assert!(classify("a.jpg", None, PNG).is_err());
        assert_eq!(
            classify("doc.PDF", None, b"%PDF-1.7\n%\xE2\xE3")
                .unwrap()
                .mime,
            "application/pdf"
        );
        assert_eq!(
            classify("x.webp", None, b"RIFF\x10\0\0\0WEBPVP8 ")
                .unwrap()
                .mime,
            "image/webp"
        );
    }

    #[test]
    fn other_recognised_binaries_are_not_allowed() {
        // A ZIP archive: `infer` knows it, the allow-list does not.
        let zip = b"PK\x03\x04\x14\0\0\0\x08\0\0\0\0\0";
        assert_eq!(signature(zip), None);
        assert!(classify("archive", None, zip).is_err());
        assert!(classify("archive.png", None, zip).is_err());
    }

    #[test]
    fn text_types_need_utf8_without_nul() {
        assert_eq!(
            classify("a.md", None, b"# hi").unwrap().mime,
            "text/markdown"
        );
        assert_eq!(
            classify("main.rs", None, "fn main() {} // é".as_bytes())
                .unwrap()
                .mime,
            "text/x-rust"
        );
        assert!(classify("a.txt", None, PNG).is_err());
        assert!(classify("a.csv", None, b"a,b\0").is_err());
        assert!(classify("a.json", None, b"\xff\xfe{}").is_err());
    }

    #[test]
    fn unknown_extensions_are_refused_and_no_extension_uses_the_declared_type() {
        assert!(classify("a.exe", None, b"MZ").is_err());
        assert!(classify("a.svg", Some("image/svg+xml"), b"<svg/>").is_err());
        assert_eq!(
            classify("README", Some("text/plain"), b"hi").unwrap().mime,
            "text/plain"
        );
        assert_eq!(
            classify("blob", Some("application/octet-stream"), PNG)
                .unwrap()
                .mime,
            "image/png"
        );
        assert!(classify("blob", Some("application/octet-stream"), b"hi").is_err());
        assert!(classify("blob", None, b"hi").is_err());
    }

    #[test]
    fn text_check_handles_characters_split_across_chunks() {
        let s = "aé€😀".as_bytes();
        for cut in 0..s.len() {
            let mut t = TextCheck::default();
            assert!(
                t.feed(&s[..cut]) && t.feed(&s[cut..]) && t.finish(),
                "cut {cut}"
            );
        }
        let mut t = TextCheck::default();
        assert!(t.feed(&s[..2]));
        assert!(!t.finish());
        let mut t = TextCheck::default();
        assert!(t.feed(&[0xE2, 0x82]));
        assert!(!t.feed(b"x"));
    }

    #[test]
    fn declared_images_must_not_be_markup_or_another_kind() {
        let jpeg = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0\x01\x01";
        // Another image format is not a contradiction; unknown bytes are not either.
        assert_eq!(contradicts("image/png", PNG), None);
        assert_eq!(contradicts("image/png", jpeg), None);
        assert_eq!(contradicts("image/webp", b"\x01\x02\x03 plain junk"), None);
        // Markup, wherever the tag hides in the head, and other recognised kinds are.
        for html in [
            &b"<html><script>alert(1)</script>"[..],
            b"\xEF\xBB\xBF  <!DOCTYPE html>",
            b"<svg xmlns='http://www.w3.org/2000/svg' onload='x()'/>",
            b"<?xml version='1.0'?><svg/>",
            b"some junk, then <ScRiPt>x()</script>",
        ] {
            assert!(contradicts("image/png", html).is_some(), "{html:?}");
            assert!(contradicts("IMAGE/JPEG; q=1", html).is_some(), "{html:?}");
        }
        assert_eq!(
            contradicts("image/png", b"%PDF-1.7\n%\xE2\xE3").as_deref(),
            Some("application/pdf")
        );
        // Other declared types are never refused by their bytes.
        for d in [
            "text/plain",
            "text/html",
            "image/svg+xml",
            "application/json",
            "x",
        ] {
            assert_eq!(contradicts(d, b"<html><script>x()</script>"), None, "{d}");
            assert_eq!(contradicts(d, PNG), None, "{d}");
        }
    }

    #[test]
    fn safe_names_are_bounded_and_harmless() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(
            safe_name("C:\\Users\\me\\My File (1).txt"),
            "My_File__1_.txt"
        );
        assert_eq!(safe_name(".hidden..md"), "hidden.md");
        assert_eq!(safe_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(safe_name("///"), "file");
        assert_eq!(safe_name("résumé.pdf"), "r_sum_.pdf");
        let long = format!("{}.pdf", "x".repeat(500));
        let s = safe_name(&long);
        assert_eq!(s.len(), 100);
        assert!(s.ends_with(".pdf"));
        assert!(crate::storage::endpoint::validate_key(&format!("u/{s}")).is_ok());
        assert_eq!(display_name("dir/My Notes.md"), "My Notes.md");
        let shown = display_name(&long);
        assert_eq!(shown.chars().count(), 255);
        assert!(shown.ends_with(".pdf"));
    }
}
