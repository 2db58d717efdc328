//! The bundled legacy API: in-memory JSON items, no ETags, racy read-modify-write.
