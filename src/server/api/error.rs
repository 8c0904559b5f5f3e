//! Errors in OpenAI's shape `{"error": {message, type, param, code}}`, with the HTTP status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error as OpenAI reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status of the response.
    pub status: StatusCode,
    /// OpenAI's `message`: what is wrong, for a person to read.
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    /// OpenAI's `param`: the request parameter at fault (`"temperature"`,
    /// `"messages[2].content"`), if any.
    pub param: Option<String>,
    /// OpenAI's `code`: a machine-readable reason (`"invalid_api_key"`, `"queue_full"`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error without `param` and `code`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// Set `param`.
    pub fn param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }

    /// Set `code`.
    pub fn code(mut self, c: &'static str) -> Self {
        self.code = Some(c);
        self
    }

    /// The JSON body `{"error": {message, type, param, code}}` (absent ones are `null`).
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            // The request (prompt, template, parameters) is what is wrong.
            crate::Error::Request(_) | crate::Error::Tokenizer(_) => {
                ApiError::invalid(e.to_string())
            }
            // Lost while this request ran: the same answer as for requests after it.
            crate::Error::DeviceLost { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("{e}; the server must be restarted"),
            )
            .code("device_lost"),
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_lost_while_generating_is_a_503_device_lost() {
        let e = ApiError::from(crate::Error::DeviceLost {
            what: "running the model".into(),
            why: "Destroyed".into(),
        });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, Some("device_lost"));
        assert!(e.message.contains("lost"), "{}", e.message);
        let e = ApiError::from(crate::Error::gpu("x", "y"));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
