package upload

import "net/http"

// WithTransport makes an s3 target of o send its requests through rt
// instead of the network (the in-memory S3 of the synctest tests).
func WithTransport(o *Options, rt http.RoundTripper) { o.transport = rt }
