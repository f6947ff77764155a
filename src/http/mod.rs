pub mod query;
pub mod request;
pub mod response;
