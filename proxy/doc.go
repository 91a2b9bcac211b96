// Package proxy serves the OpenStack Image API v2 in front of an upstream Glance, with image
// data from a local cache (package cache).
//
// Everything is forwarded to the upstream as it is (net/http/httputil.ReverseProxy: method,
// path, query, body, X-Auth-Token and the identity headers out; status, headers and body
// back), with three exceptions:
//
//   - GET /v2/images/{id}/file: the proxy first asks the upstream for GET /v2/images/{id}
//     with the caller's own headers. Only a 200 for an active image lets the cache answer
//     (the yes is kept per caller credentials and image for the auth TTL); anything else is
//     forwarded, so that the caller gets the upstream's own answer (Glance's 404 for
//     another project's private image). The cache's answer carries what Glance sends:
//     Content-Type application/octet-stream, Content-Length, Content-MD5, and for a Range
//     206 with Content-Range, or Glance's 416 and 400. HEAD is forwarded: Glance answers
//     it with 405.
//   - PUT /v2/images/{id}/file and PUT /v2/images/{id}/stage: the upload is inspected as it
//     streams (inspect.Stream, against the image's declared disk_format) and judged under
//     the operator's policy; a refused upload gets a 400 and the upstream never receives a
//     complete body (the last inspect.Stream.HoldBack bytes wait for the verdict), so the
//     image never becomes active.
//   - /healthcheck and /metrics are the proxy's own.
//
// The admin handler serves Glance's cache API (GET /v2/cache, PUT and DELETE
// /v2/cache/{id}, DELETE /v2/cache with x-image-cache-clear-target) for a loopback
// listener; prefetches run in a bounded pool with the configured service credentials.
package proxy
