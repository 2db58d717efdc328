//! The reverse proxy: the I/O edge around the guard.
