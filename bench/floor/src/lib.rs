//! The proxy-wasm floor (`make bench`, case 3w): an HTTP filter that answers every request
//! itself with `send_http_response`, a body the size the path names (`/f/1k` → 1024 bytes,
//! `/f/64k` → 65536, `/f/1m` → 1048576), and nothing else. No configuration, no callouts, no
//! cache: what any proxy-wasm filter pays to answer a request locally in Envoy.

use std::rc::Rc;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;

/// The largest body served; the bench's largest file.
const MAX_BODY: usize = 1 << 20;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        // Filled once per VM: a request only borrows a prefix of it.
        Box::new(Root { body: vec![b'x'; MAX_BODY].into() })
    });
}}

struct Root {
    body: Rc<[u8]>,
}

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            body: self.body.clone(),
        }))
    }
}

struct Floor {
    body: Rc<[u8]>,
}

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        match self
            .get_http_request_header(":path")
            .and_then(|p| size_of_path(&p))
        {
            Some(n) => self.send_http_response(
                200,
                vec![("content-type", "application/octet-stream")],
                Some(&self.body[..n]),
            ),
            None => self.send_http_response(404, vec![], None),
        }
        Action::Pause
    }
}

/// The body size the path's last segment names: `1k`, `64k`, `1m`, or a number of bytes.
fn size_of_path(path: &str) -> Option<usize> {
    let path = path.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    let (digits, unit) = match last.as_bytes().last()? {
        b'k' | b'K' => (&last[..last.len() - 1], 1 << 10),
        b'm' | b'M' => (&last[..last.len() - 1], 1 << 20),
        _ => (last, 1),
    };
    let n = digits.parse::<usize>().ok()?.checked_mul(unit)?;
    (n <= MAX_BODY).then_some(n)
}
