//! Image transformations (/render/image/{authenticated,public,sign}/...): width, height,
//! resize (cover | contain | fill), quality, format, with the pure-Rust `image` crate
//! (JPEG, PNG, WebP). Bounded: input bytes and pixels are capped, at most two renders run
//! at once, each on a blocking thread with a deadline.

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use image::{DynamicImage, ImageFormat};
use serde_json::Value;

use super::endpoint::{Access, ObjectRef};
use super::error::StorageError;
use super::objects::{find_object, Reader};
use super::store::Store;
use crate::http::apikey::AuthContext;
use crate::http::{full, query_pairs, Req, Resp};
use crate::state::AppState;

/// Largest source object read for a transformation.
const MAX_INPUT_BYTES: u64 = 25 * 1024 * 1024;
/// Largest source image (width × height).
const MAX_INPUT_PIXELS: u64 = 40_000_000;
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
    v.trim()
        .parse::<u32>()
        .ok()
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
                t.quality = v
                    .parse::<u8>()
                    .ok()
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

/// Decode, resize and encode (CPU-bound: call from a blocking thread).
pub fn transform_bytes(
    input: &[u8],
    t: &Transform,
    accept_webp: bool,
) -> Result<(Vec<u8>, ImageFormat), StorageError> {
    let bad = |m: &str| StorageError::ImageProcessing(m.to_string());
    let reader = image::ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|_| bad("The object is not an image that can be transformed"))?;
    let src_format = reader
        .format()
        .filter(|f| matches!(f, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP))
        .ok_or_else(|| bad("The object is not an image that can be transformed"))?;
    let (w0, h0) = reader
        .into_dimensions()
        .map_err(|_| bad("The image could not be read"))?;
    if w0 as u64 * h0 as u64 > MAX_INPUT_PIXELS {
        return Err(bad("The image is too large to transform"));
    }
    let mut reader = image::ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|_| bad("The image could not be read"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(20_000);
    limits.max_image_height = Some(20_000);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|_| bad("The image could not be decoded"))?;
    let (w0, h0) = (img.width().max(1), img.height().max(1));
    let filter = image::imageops::FilterType::Triangle;
    let img: DynamicImage = match (t.width, t.height) {
        (None, None) => img,
        (Some(w), None) => {
            let h = ((h0 as u64 * w as u64) / w0 as u64).max(1) as u32;
            img.resize_exact(w, h, filter)
        }
        (None, Some(h)) => {
            let w = ((w0 as u64 * h as u64) / h0 as u64).max(1) as u32;
            img.resize_exact(w, h, filter)
        }
        (Some(w), Some(h)) => match t.resize {
            Resize::Cover => img.resize_to_fill(w, h, filter),
            Resize::Contain => img.resize(w, h, filter),
            Resize::Fill => img.resize_exact(w, h, filter),
        },
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

    #[test]
    fn signed_strings_round_trip() {
        let s = "height:200,width:200,resizing_type:fill,quality:60";
        let t = from_signed(s).unwrap();
        assert_eq!(t.describe(), s);
        assert_eq!(t.resize, Resize::Cover);
    }
}
