//! How a request ended, in no protocol's terms. Each front end maps it to its own codes in
//! one place (NBD: `target::nbd::protocol::nbd_errno`).

/// The outcome of a block request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStatus {
    Ok,
    /// Malformed: misaligned, unknown flags, an operation the front end cannot express.
    Invalid,
    /// Past the end of the volume.
    OutOfRange,
    /// Larger than the front end's largest request.
    TooLarge,
    /// Not allowed on this path: the domain forbids the operation, or the path is read-only.
    NotPermitted,
    /// The pool has no free extent for a first write.
    NoSpace,
    /// A LUN (or the provisioning thread) failed it.
    IoError,
    /// The volume is being deleted, or the session is closing.
    ShutDown,
}

impl BlockStatus {
    #[inline]
    pub fn is_ok(self) -> bool {
        self == Self::Ok
    }

    /// The status of a failed LUN I/O or provisioning answer, from its (positive) errno.
    #[inline]
    pub fn from_errno(errno: i32) -> Self {
        if errno == libc::ENOSPC {
            Self::NoSpace
        } else {
            Self::IoError
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Invalid => "invalid",
            Self::OutOfRange => "out of range",
            Self::TooLarge => "too large",
            Self::NotPermitted => "not permitted",
            Self::NoSpace => "no space",
            Self::IoError => "I/O error",
            Self::ShutDown => "shut down",
        }
    }
}
