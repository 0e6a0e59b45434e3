//! The fuzz entry points, one per target in `fuzz/fuzz_targets/` (same names as there and as
//! the corpus folders): any bytes in, no panic out. They are the crate's only public way into
//! the API internals, which stay `pub(crate)` so the compiler reports their dead code.

pub use crate::realtime::phoenix::fuzz_frame as phoenix_frame;
pub use crate::rest::fuzz::{prefer_header, query_string as rest_query};
pub use crate::storage::fuzz::{
    object_path as storage_object_path, range_header as storage_range,
    upload_body as storage_upload,
};
