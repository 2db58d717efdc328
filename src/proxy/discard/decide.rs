//! What becomes of an answer given while its request body is unread: a pure decision over what
//! is known of the body and the answer.

/// What is known of an HTTP/1.1 request body, left unread, when its answer is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unread {
    /// The answer already closes the connection (`Connection: close`, e.g. a 431).
    pub(super) answer_closes: bool,
    /// The upstream client read part of the body before it gave it up.
    pub(super) forwarded: bool,
    /// The client sent `Expect: 100-continue` (and, nothing having read the body, hyper has
    /// not sent `100 Continue`).
    pub(super) expects_continue: bool,
    /// Bytes the body is known to still hold (its remaining `Content-Length`, or 0).
    pub(super) announced: u64,
    /// `server.discard_body_bytes`.
    pub(super) max_bytes: u64,
}

/// What to do with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Read and discard the rest of the body, then answer.
    Drain,
    /// Answer now, the connection closing gracefully after it.
    Linger,
    /// Answer now with `Connection: close`, for this reason (a metric label).
    Close(&'static str),
}

/// Decides what becomes of an answer given while `body` is unread.
pub(super) fn decide(body: Unread) -> Decision {
    if body.answer_closes {
        // The connection closes anyway: only the close is left to make graceful, not worth
        // reading a body for.
        return Decision::Linger;
    }
    if body.forwarded {
        // The upstream failed or answered early, or the body timed out: the client may be
        // one that waits for the answer before it sends the rest, and the answer should not
        // wait for it.
        return Decision::Close("forwarded");
    }
    if body.expects_continue {
        // The client may be waiting, not sending: it may not send the body at all now that it
        // has its answer (RFC 9110 §10.1.1), and only closing frames its next request.
        return Decision::Close("unsent");
    }
    if body.announced > body.max_bytes {
        return Decision::Close("too_large");
    }
    Decision::Drain
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Unread = Unread {
        answer_closes: false,
        forwarded: false,
        expects_continue: false,
        announced: 100,
        max_bytes: 100,
    };

    #[test]
    fn table() {
        let cases = [
            (PLAIN, Decision::Drain),
            (
                Unread {
                    announced: 0,
                    ..PLAIN
                },
                Decision::Drain,
            ),
            (
                Unread {
                    announced: 101,
                    ..PLAIN
                },
                Decision::Close("too_large"),
            ),
            (
                Unread {
                    announced: 1,
                    max_bytes: 0,
                    ..PLAIN
                },
                Decision::Close("too_large"),
            ),
            (
                Unread {
                    expects_continue: true,
                    ..PLAIN
                },
                Decision::Close("unsent"),
            ),
            (
                Unread {
                    forwarded: true,
                    expects_continue: true,
                    ..PLAIN
                },
                Decision::Close("forwarded"),
            ),
            (
                Unread {
                    forwarded: true,
                    announced: 1 << 40,
                    ..PLAIN
                },
                Decision::Close("forwarded"),
            ),
            (
                Unread {
                    answer_closes: true,
                    forwarded: true,
                    expects_continue: true,
                    announced: 1 << 40,
                    max_bytes: 0,
                },
                Decision::Linger,
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(decide(body), expected, "{body:?}");
        }
    }
}
