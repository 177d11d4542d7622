//! The HTTP front end (issue 11): marathon-lb's virtual hosts on :80 and :443. `routes` derives
//! which host goes where from the Marathon catalog; the rest serves it.
pub mod routes;
