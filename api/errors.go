package api

import (
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"strings"
)

// titles are webob's reason phrases, which Glance puts in "code" and "title". They differ
// from Go's http.StatusText in a few places (416).
var titles = map[int]string{
	http.StatusBadRequest:                   "Bad Request",
	http.StatusUnauthorized:                 "Unauthorized",
	http.StatusForbidden:                    "Forbidden",
	http.StatusNotFound:                     "Not Found",
	http.StatusMethodNotAllowed:             "Method Not Allowed",
	http.StatusNotAcceptable:                "Not Acceptable",
	http.StatusConflict:                     "Conflict",
	http.StatusGone:                         "Gone",
	http.StatusRequestEntityTooLarge:        "Request Entity Too Large",
	http.StatusUnsupportedMediaType:         "Unsupported Media Type",
	http.StatusRequestedRangeNotSatisfiable: "Request Range Not Satisfiable",
	http.StatusInternalServerError:          "Internal Server Error",
	http.StatusNotImplemented:               "Not Implemented",
	http.StatusBadGateway:                   "Bad Gateway",
	http.StatusServiceUnavailable:           "Service Unavailable",
	http.StatusGatewayTimeout:               "Gateway Timeout",
}

// Title is the reason phrase Glance uses for status.
func Title(status int) string {
	if t, ok := titles[status]; ok {
		return t
	}
	return http.StatusText(status)
}

// ErrorBody is Glance's JSON error body:
//
//	{"message": "No image found with ID …<br /><br />\n\n\n", "code": "404 Not Found", "title": "Not Found"}
type ErrorBody struct {
	Message string `json:"message"`
	Code    string `json:"code"`
	Title   string `json:"title"`
}

// NewErrorBody builds the body Glance sends for status with the explanation msg (and an
// optional detail line, as webob's exceptions carry).
func NewErrorBody(status int, msg, detail string) ErrorBody {
	t := Title(status)
	return ErrorBody{
		Message: msg + "<br /><br />\n" + detail + "\n\n",
		Code:    fmt.Sprintf("%d %s", status, t),
		Title:   t,
	}
}

// WriteError answers with Glance's error for status: JSON when the request asks for JSON
// (gophercloud does), otherwise the HTML page webob renders.
func WriteError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	WriteErrorDetail(w, r, status, msg, "")
}

// WriteErrorDetail is WriteError with webob's detail line.
func WriteErrorDetail(w http.ResponseWriter, r *http.Request, status int, msg, detail string) {
	h := w.Header()
	h.Del("Content-Length")
	h.Del("Content-MD5")
	h.Del("Content-Range")
	if r == nil || acceptsJSON(r) {
		b := marshalNoEscape(NewErrorBody(status, msg, detail))
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", fmt.Sprint(len(b)))
		w.WriteHeader(status)
		w.Write(b)
		return
	}
	t := Title(status)
	page := fmt.Sprintf("<html>\n <head>\n  <title>%d %s</title>\n </head>\n <body>\n  <h1>%d %s</h1>\n  %s<br /><br />\n%s\n\n </body>\n</html>",
		status, t, status, t, html.EscapeString(msg), html.EscapeString(detail))
	h.Set("Content-Type", "text/html; charset=UTF-8")
	h.Set("Content-Length", fmt.Sprint(len(page)))
	w.WriteHeader(status)
	w.Write([]byte(page))
}

// acceptsJSON follows webob: Glance answers JSON only to a request that names it in Accept;
// anything else (no Accept, */*) gets the HTML page.
func acceptsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}

// ErrorMessage extracts the message from a Glance error body (JSON or HTML), without
// webob's trailing markup; "" when the body is neither.
func ErrorMessage(body []byte) string {
	var e ErrorBody
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		m, _, _ := strings.Cut(e.Message, "<br />")
		return strings.TrimSpace(m)
	}
	return ""
}

// marshalNoEscape is json.Marshal without HTML escaping: Glance's bodies carry "<br />"
// as it is.
func marshalNoEscape(v any) []byte {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return []byte(strings.TrimSuffix(b.String(), "\n"))
}
