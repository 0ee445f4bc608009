//! Authentication tests through the public API, on real files in temp dirs.

mod jwt;
mod opaque;
