//! Image transformations (/render/image/{authenticated,public,sign}/...): width, height,
//! resize (cover | contain | fill), quality, format, with the pure-Rust `image` crate
//! (JPEG, PNG, WebP). Bounded: input bytes and pixels are capped, at most two renders run
//! at once, each on a blocking thread with a deadline.

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use image::{DynamicImage, ImageDecoder, ImageFormat};
use serde_json::Value;

use super::coerce;
use super::endpoint::{Access, ObjectRef};
use super::error::StorageError;
use super::objects::{find_object, Reader};
use super::store::Store;
use crate::http::{full, query_pairs, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;

/// Largest source object read for a transformation.
const MAX_INPUT_BYTES: u64 = 25 * 1024 * 1024;
/// Largest source image (width × height).
const MAX_INPUT_PIXELS: u64 = 40_000_000;
/// Largest source side.
const MAX_INPUT_SIDE: u32 = 20_000;
/// Largest decoded source (width × height × bytes per pixel): a 16-bit RGBA PNG of
/// 6000 × 6000 (288 MB decoded, a few hundred KB on disk) is refused before decoding.
const MAX_DECODED_BYTES: u64 = 128 * 1024 * 1024;
/// Largest requested side, as Supabase.
const MAX_SIDE: u32 = 2500;
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    Cover,
    Contain,
    Fill,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub resize: Resize,
    pub quality: u8,
    /// `None` = the source's format ("origin").
    pub format: Option<ImageFormat>,
}

impl Transform {
    /// As the `x-transformations` header reports it (imgproxy's words, as Supabase).
    pub fn describe(&self) -> String {
        let mut p = vec![];
        if let Some(h) = self.height {
            p.push(format!("height:{h}"));
        }
        if let Some(w) = self.width {
            p.push(format!("width:{w}"));
        }
        p.push(format!(
            "resizing_type:{}",
            match self.resize {
                Resize::Cover => "fill",
                Resize::Contain => "fit",
                Resize::Fill => "force",
            }
        ));
        p.push(format!("quality:{}", self.quality));
        p.join(",")
    }
}

fn side(v: &str, name: &str) -> Result<u32, StorageError> {
    coerce::int_str(v)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=MAX_SIDE).contains(n))
        .ok_or_else(|| StorageError::InvalidParameter(name.into()))
}

fn format_of(v: &str) -> Result<Option<ImageFormat>, StorageError> {
    match v.to_ascii_lowercase().as_str() {
        "" | "origin" => Ok(None),
        "webp" => Ok(Some(ImageFormat::WebP)),
        "png" => Ok(Some(ImageFormat::Png)),
        "jpeg" | "jpg" => Ok(Some(ImageFormat::Jpeg)),
        _ => Err(StorageError::InvalidParameter("format".into())),
    }
}

/// From the query string (`width`, `height`, `resize`, `quality`, `format`).
pub fn from_query(q: &[(String, String)]) -> Result<Transform, StorageError> {
    let mut t = Transform {
        width: None,
        height: None,
        resize: Resize::Cover,
        quality: 80,
        format: None,
    };
    for (k, v) in q {
        match k.as_str() {
            "width" => t.width = Some(side(v, "width")?),
            "height" => t.height = Some(side(v, "height")?),
            "resize" => {
                t.resize = match v.as_str() {
                    "cover" => Resize::Cover,
                    "contain" => Resize::Contain,
                    "fill" => Resize::Fill,
                    _ => return Err(StorageError::InvalidParameter("resize".into())),
                }
            }
            "quality" => {
                t.quality = coerce::int_str(v)
                    .and_then(|n| u8::try_from(n).ok())
                    .filter(|n| (20..=100).contains(n))
                    .ok_or_else(|| StorageError::InvalidParameter("quality".into()))?
            }
            "format" => t.format = format_of(v)?,
            _ => {}
        }
    }
    Ok(t)
}

/// From a signed token's `transformations` string.
pub fn from_signed(s: &str) -> Result<Transform, StorageError> {
    let mut q = vec![];
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| StorageError::InvalidParameter("transformations".into()))?;
        let (k, v) = match (k, v) {
            ("resizing_type", "fill") => ("resize", "cover"),
            ("resizing_type", "fit") => ("resize", "contain"),
            ("resizing_type", "force") => ("resize", "fill"),
            other => other,
        };
        q.push((k.to_string(), v.to_string()));
    }
    from_query(&q)
}

fn mime(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "image/png",
        ImageFormat::WebP => "image/webp",
        _ => "image/jpeg",
    }
}

fn too_large() -> StorageError {
    StorageError::ImageProcessing("The image is too large to transform".into())
}

/// A region of the source: x, y, width, height.
type Crop = (u32, u32, u32, u32);

/// The output size for a source of `w0` × `h0`, and for `cover` the centred crop of the
/// source (x, y, width, height) that has the output's aspect ratio. A side computed from
/// the other (one side given) must stay within [`MAX_SIDE`].
fn geometry(w0: u32, h0: u32, t: &Transform) -> Result<((u32, u32), Option<Crop>), StorageError> {
    let (w0, h0) = (u64::from(w0.max(1)), u64::from(h0.max(1)));
    let derived = |n: u64| {
        u32::try_from(n.max(1))
            .ok()
            .filter(|n| *n <= MAX_SIDE)
            .ok_or_else(|| StorageError::ImageProcessing("The requested size is too large".into()))
    };
    let out = match (t.width, t.height) {
        (None, None) => return Ok(((w0 as u32, h0 as u32), None)),
        (Some(w), None) => (w, derived(h0 * u64::from(w) / w0)?),
        (None, Some(h)) => (derived(w0 * u64::from(h) / h0)?, h),
        (Some(w), Some(h)) => match t.resize {
            Resize::Fill => (w, h),
            Resize::Contain => {
                // The largest size of the source's aspect ratio within w × h.
                let (w, h) = (u64::from(w), u64::from(h));
                if w * h0 <= h * w0 {
                    (w as u32, (h0 * w / w0).max(1) as u32)
                } else {
                    ((w0 * h / h0).max(1) as u32, h as u32)
                }
            }
            Resize::Cover => {
                let (wl, hl) = (u64::from(w), u64::from(h));
                // Keep the source's full width or full height, whichever fits the ratio.
                let (cw, ch) = if w0 * hl > h0 * wl {
                    ((h0 * wl / hl).clamp(1, w0), h0)
                } else {
                    (w0, (w0 * hl / wl).clamp(1, h0))
                };
                let crop = ((w0 - cw) / 2, (h0 - ch) / 2, cw, ch);
                let crop = (crop.0 as u32, crop.1 as u32, crop.2 as u32, crop.3 as u32);
                return Ok(((w, h), Some(crop)));
            }
        },
    };
    Ok((out, None))
}

/// Scale to exactly `w` × `h` in bounded memory: sides that shrink go through the box
/// sampler (it allocates the output only), sides that grow through the triangle filter,
/// whose work buffer (source width × output height, 16 bytes a pixel) is then at most
/// [`MAX_SIDE`]² pixels.
fn scale(img: DynamicImage, w: u32, h: u32) -> DynamicImage {
    let (sw, sh) = (img.width(), img.height());
    let img = if w < sw || h < sh {
        img.thumbnail_exact(w.min(sw), h.min(sh))
    } else {
        img
    };
    if (img.width(), img.height()) == (w, h) {
        img
    } else {
        img.resize_exact(w, h, image::imageops::FilterType::Triangle)
    }
}

/// Decode, resize and encode (CPU-bound: call from a blocking thread). The source is
/// refused before decoding when its dimensions or decoded size pass the bounds above, and
/// the decoder itself runs under the same limits.
pub fn transform_bytes(
    input: &[u8],
    t: &Transform,
    accept_webp: bool,
) -> Result<(Vec<u8>, ImageFormat), StorageError> {
    let bad = |m: &str| StorageError::ImageProcessing(m.to_string());
    let limits = || {
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_INPUT_SIDE);
        limits.max_image_height = Some(MAX_INPUT_SIDE);
        limits.max_alloc = Some(MAX_DECODED_BYTES);
        limits
    };
    let mut reader = image::ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|_| bad("The object is not an image that can be transformed"))?;
    let src_format = reader
        .format()
        .filter(|f| matches!(f, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP))
        .ok_or_else(|| bad("The object is not an image that can be transformed"))?;
    reader.limits(limits());
    let decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(),
        _ => bad("The image could not be read"),
    })?;
    let (w0, h0) = decoder.dimensions();
    if w0 > MAX_INPUT_SIDE
        || h0 > MAX_INPUT_SIDE
        || u64::from(w0) * u64::from(h0) > MAX_INPUT_PIXELS
        || decoder.total_bytes() > MAX_DECODED_BYTES
    {
        return Err(too_large());
    }
    let ((w, h), crop) = geometry(w0, h0, t)?;
    let mut reader = image::ImageReader::new(Cursor::new(input));
    reader.set_format(src_format);
    reader.limits(limits());
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(),
        _ => bad("The image could not be decoded"),
    })?;
    let img = match crop {
        Some((x, y, cw, ch)) if (cw, ch) != (img.width(), img.height()) => {
            img.crop_imm(x, y, cw, ch)
        }
        _ => img,
    };
    let img = if (w, h) == (img.width(), img.height()) {
        img
    } else {
        scale(img, w, h)
    };
    let out_format = t.format.unwrap_or(if accept_webp {
        ImageFormat::WebP
    } else {
        src_format
    });
    let mut out = Vec::new();
    match out_format {
        ImageFormat::Jpeg => {
            let rgb = img.to_rgb8();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, t.quality)
                .encode_image(&rgb)
                .map_err(|_| bad("The image could not be encoded"))?;
        }
        ImageFormat::WebP => {
            let rgba = img.to_rgba8();
            image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                .encode(
                    rgba.as_raw(),
                    rgba.width(),
                    rgba.height(),
                    image::ExtendedColorType::Rgba8,
                )
                .map_err(|_| bad("The image could not be encoded"))?;
        }
        _ => {
            img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
                .map_err(|_| bad("The image could not be encoded"))?;
        }
    }
    Ok((out, out_format))
}

fn accepts_webp(h: &HeaderMap) -> bool {
    h.get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("image/webp"))
}

pub async fn render(
    state: &AppState,
    req: Req,
    ctx: Option<&AuthContext>,
    obj: ObjectRef,
    access: Access,
) -> Result<Resp, StorageError> {
    let q = query_pairs(req.uri().query());
    let mut signed_desc = None;
    let (t, who) = match access {
        Access::Signed => {
            let token = q
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.clone())
                .ok_or_else(|| StorageError::MissingParameter("token".into()))?;
            let claims = super::signed::verify(state, &token, &obj, "storage-download")?;
            let s = claims
                .get("transformations")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let t = from_signed(&s)?;
            signed_desc = Some(s);
            (t, Reader::Token)
        }
        Access::Public => (from_query(&q)?, Reader::Public),
        Access::Authenticated => (
            from_query(&q)?,
            Reader::Caller(ctx.ok_or_else(|| StorageError::internal("render without caller"))?),
        ),
    };
    let row = find_object(state, who, &obj).await?;
    let bytes: Bytes = state
        .storage
        .store
        .get_all(&Store::object_key(&row.version), MAX_INPUT_BYTES)
        .await?;
    if t.format.is_none() && is_svg(&row.mimetype(), &bytes) {
        return svg_as_is(bytes, &row, &obj, &q);
    }
    let permit = tokio::time::timeout(
        DEADLINE,
        state.storage.render_permits.clone().acquire_owned(),
    )
    .await
    .map_err(|_| StorageError::ImageProcessing("The image service is busy".into()))?
    .map_err(StorageError::internal)?;
    let webp = accepts_webp(req.headers());
    let t2 = t.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        transform_bytes(&bytes, &t2, webp)
    });
    let (out, fmt) = tokio::time::timeout(DEADLINE, job)
        .await
        .map_err(|_| StorageError::ImageProcessing("The transformation took too long".into()))?
        .map_err(StorageError::internal)??;
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", mime(fmt))
        .header(super::objects::NOSNIFF.0, super::objects::NOSNIFF.1)
        .header("content-length", out.len())
        .header("cache-control", row.cache_control())
        .header(
            "x-transformations",
            signed_desc.unwrap_or_else(|| t.describe()),
        );
    if let Some((_, d)) = q.iter().find(|(k, _)| k == "download") {
        b = b.header(
            "content-disposition",
            super::objects::content_disposition(d, &obj),
        );
    }
    b.body(full(out)).map_err(StorageError::internal)
}

/// An SVG the image service cannot rasterize: like Supabase's imgproxy, which returns a
/// vector source as is when no other format is asked for, it is served untransformed, with
/// the headers every active object gets (nosniff, a sandbox CSP, a download disposition).
fn is_svg(mimetype: &str, bytes: &[u8]) -> bool {
    let declared = mimetype
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("image/svg+xml"));
    declared && image::guess_format(bytes).is_err()
}

fn svg_as_is(
    bytes: Bytes,
    row: &super::objects::ObjectRow,
    obj: &ObjectRef,
    q: &[(String, String)],
) -> Result<Resp, StorageError> {
    let download = q
        .iter()
        .find(|(k, _)| k == "download")
        .map_or("", |(_, v)| v.as_str());
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "image/svg+xml")
        .header(super::objects::NOSNIFF.0, super::objects::NOSNIFF.1)
        .header(super::objects::SANDBOX.0, super::objects::SANDBOX.1)
        .header(
            "content-disposition",
            super::objects::content_disposition(download, obj),
        )
        .header("content-length", bytes.len())
        .header("cache-control", row.cache_control())
        .body(full(bytes))
        .map_err(StorageError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 255) as u8, (y % 255) as u8, 7])
        }));
        let mut out = vec![];
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn resize_modes() {
        let src = png(400, 200);
        let dims = |t: &Transform| {
            let (out, _) = transform_bytes(&src, t, false).unwrap();
            let i = image::load_from_memory(&out).unwrap();
            (i.width(), i.height())
        };
        let t = from_query(&q(&[("width", "100"), ("height", "100")])).unwrap();
        assert_eq!(dims(&t), (100, 100));
        let t = from_query(&q(&[
            ("width", "100"),
            ("height", "100"),
            ("resize", "contain"),
        ]))
        .unwrap();
        assert_eq!(dims(&t), (100, 50));
        let t = from_query(&q(&[
            ("width", "100"),
            ("height", "80"),
            ("resize", "fill"),
        ]))
        .unwrap();
        assert_eq!(dims(&t), (100, 80));
        let t = from_query(&q(&[("width", "200")])).unwrap();
        assert_eq!(dims(&t), (200, 100));
    }

    #[test]
    fn formats_and_bad_input() {
        let src = png(20, 20);
        let t = from_query(&q(&[("width", "10"), ("format", "webp")])).unwrap();
        assert_eq!(
            transform_bytes(&src, &t, false).unwrap().1,
            ImageFormat::WebP
        );
        let t = from_query(&q(&[("width", "10"), ("quality", "50")])).unwrap();
        assert_eq!(
            transform_bytes(&src, &t, false).unwrap().1,
            ImageFormat::Png
        );
        assert_eq!(
            transform_bytes(&src, &t, true).unwrap().1,
            ImageFormat::WebP
        );
        assert!(transform_bytes(b"not an image", &t, false).is_err());
        assert!(from_query(&q(&[("width", "0")])).is_err());
        assert!(from_query(&q(&[("width", "2501")])).is_err());
        assert!(from_query(&q(&[("quality", "5")])).is_err());
        assert!(from_query(&q(&[("resize", "stretch")])).is_err());
    }

    /// A 4000 × 1 strip covered to 2500 × 2500 used to be scaled to 10 000 000 × 2500
    /// before cropping; now the source is cropped first. A side derived from the other
    /// may not pass the largest requested side.
    #[test]
    fn extreme_aspect_ratios_stay_small() {
        let strip = png(4000, 1);
        let t = from_query(&q(&[("width", "2500"), ("height", "2500")])).unwrap();
        let (out, _) = transform_bytes(&strip, &t, false).unwrap();
        let i = image::load_from_memory(&out).unwrap();
        assert_eq!((i.width(), i.height()), (2500, 2500));
        let t = from_query(&q(&[
            ("width", "2500"),
            ("height", "10"),
            ("resize", "fill"),
        ]))
        .unwrap();
        let (out, _) = transform_bytes(&png(1, 3000), &t, false).unwrap();
        let i = image::load_from_memory(&out).unwrap();
        assert_eq!((i.width(), i.height()), (2500, 10));
        let t = from_query(&q(&[("height", "2500")])).unwrap();
        assert!(matches!(
            transform_bytes(&strip, &t, false),
            Err(StorageError::ImageProcessing(_))
        ));
    }

    #[test]
    fn geometry_matches_the_resize_modes() {
        let t = |w: Option<u32>, h: Option<u32>, resize| Transform {
            width: w,
            height: h,
            resize,
            quality: 80,
            format: None,
        };
        assert_eq!(
            geometry(400, 200, &t(Some(100), Some(100), Resize::Cover)).unwrap(),
            ((100, 100), Some((100, 0, 200, 200)))
        );
        assert_eq!(
            geometry(200, 400, &t(Some(100), Some(50), Resize::Cover)).unwrap(),
            ((100, 50), Some((0, 150, 200, 100)))
        );
        assert_eq!(
            geometry(400, 200, &t(Some(100), Some(100), Resize::Contain)).unwrap(),
            ((100, 50), None)
        );
        assert_eq!(
            geometry(400, 200, &t(None, Some(100), Resize::Cover)).unwrap(),
            ((200, 100), None)
        );
        assert_eq!(
            geometry(7, 9, &t(None, None, Resize::Fill)).unwrap(),
            ((7, 9), None)
        );
    }

    #[test]
    fn signed_strings_round_trip() {
        let s = "height:200,width:200,resizing_type:fill,quality:60";
        let t = from_signed(s).unwrap();
        assert_eq!(t.describe(), s);
        assert_eq!(t.resize, Resize::Cover);
    }
}
