package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// PatchMediaType is the only media type Glance v2.1+ accepts for PATCH /v2/images/{id}.
const PatchMediaType = "application/openstack-images-v2.1-json-patch"

// PatchOp is one operation of Glance's JSON-patch dialect: add, remove or replace of one
// attribute. Path holds the decoded JSON pointer's tokens ("/tags" is ["tags"]).
type PatchOp struct {
	Op       string
	Path     []string
	Value    json.RawMessage
	HasValue bool
}

// Attribute is the attribute the operation touches (the pointer's first token).
func (op PatchOp) Attribute() string {
	if len(op.Path) == 0 {
		return ""
	}
	return op.Path[0]
}

// APIError is an error with the status and the message (and webob detail line) Glance
// answers with. Handlers return it; WriteErr writes it.
type APIError struct {
	Status  int
	Message string
	Detail  string
	// Raw, when set, is the exact "message" field (for the few bodies webob formats
	// differently, such as 415).
	Raw string
}

func (e *APIError) Error() string {
	if e.Detail != "" {
		return fmt.Sprintf("%d: %s: %s", e.Status, e.Message, e.Detail)
	}
	return fmt.Sprintf("%d: %s", e.Status, e.Message)
}

// Errorf makes an *APIError with a formatted message.
func Errorf(status int, format string, args ...any) *APIError {
	return &APIError{Status: status, Message: fmt.Sprintf(format, args...)}
}

// Forbidden is the 403 Glance raises with a detail line: "Access was denied to this
// resource." and the reason below it.
func Forbidden(detail string) *APIError {
	return &APIError{Status: http.StatusForbidden, Message: "Access was denied to this resource.", Detail: detail}
}

// UnsupportedMediaType is Glance's 415 for a body of the wrong type.
func UnsupportedMediaType(contentType string) *APIError {
	return &APIError{Status: http.StatusUnsupportedMediaType,
		Raw: fmt.Sprintf("The request media type %s is not supported by this server.\n<br /><br />\n", contentType)}
}

// WriteErr writes e as Glance would.
func WriteErr(w http.ResponseWriter, r *http.Request, e *APIError) {
	if e.Raw == "" {
		WriteErrorDetail(w, r, e.Status, e.Message, e.Detail)
		return
	}
	h := w.Header()
	h.Del("Content-Length")
	if r == nil || acceptsJSON(r) {
		t := Title(e.Status)
		b := marshalNoEscape(ErrorBody{Message: e.Raw, Code: fmt.Sprintf("%d %s", e.Status, t), Title: t})
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", fmt.Sprint(len(b)))
		w.WriteHeader(e.Status)
		w.Write(b)
		return
	}
	msg, _, _ := strings.Cut(e.Raw, "<br />")
	WriteErrorDetail(w, r, e.Status, strings.TrimSpace(msg), "")
}

// Image attributes a caller may not set (read-only) or may not name at all (reserved), as
// Glance Zed's images API lists them. "id" may be given at create, never changed.
var (
	readOnlyAttributes = map[string]bool{
		"created_at": true, "updated_at": true, "status": true, "checksum": true,
		"os_hash_algo": true, "os_hash_value": true, "size": true, "virtual_size": true,
		"direct_url": true, "self": true, "file": true, "schema": true, "id": true, "stores": true,
	}
	reservedAttributes = map[string]bool{"location": true, "deleted": true, "deleted_at": true, "locations": true}
)

// CheckAttribute returns Glance's refusal for a caller naming attribute key at create
// (create true) or in a patch: 403 for read-only and reserved attributes, nil otherwise.
// At create Glance words reserved ones with a detail line, in a patch without.
func CheckAttribute(key string, create bool) *APIError {
	if create && key == "id" {
		return nil
	}
	if readOnlyAttributes[key] {
		return Errorf(http.StatusForbidden, "Attribute '%s' is read-only.", key)
	}
	reserved := reservedAttributes[key] || strings.HasPrefix(key, "os_glance")
	if !reserved {
		return nil
	}
	if create && key != "locations" {
		return Forbidden(fmt.Sprintf("Attribute '%s' is reserved.", key))
	}
	return Errorf(http.StatusForbidden, "Attribute '%s' is reserved.", key)
}

// ParsePatch parses a PATCH body in Glance's v2.1 dialect, with Glance's messages for every
// malformed case. contentType is the request's Content-Type (415 unless PatchMediaType).
// Read-only and reserved attributes are refused here too (403), as Glance does before
// looking at the image.
func ParsePatch(contentType string, body []byte) ([]PatchOp, *APIError) {
	ct, _, _ := strings.Cut(contentType, ";")
	ct = strings.TrimSpace(strings.ToLower(ct))
	if ct != PatchMediaType {
		if ct == "" {
			ct = "None"
		}
		return nil, UnsupportedMediaType(ct)
	}
	var raw []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	var top any
	if err := dec.Decode(&top); err != nil {
		return nil, Errorf(http.StatusBadRequest, "Malformed JSON in request body.")
	}
	if _, ok := top.([]any); !ok {
		return nil, Errorf(http.StatusBadRequest, "Request body must be a JSON array of operation objects.")
	}
	json.Unmarshal(body, &raw)
	ops := make([]PatchOp, 0, len(raw))
	for _, r := range raw {
		var obj map[string]json.RawMessage
		if json.Unmarshal(r, &obj) != nil || obj == nil {
			return nil, Errorf(http.StatusBadRequest, "Operations must be JSON objects.")
		}
		var op PatchOp
		rawOp, ok := obj["op"]
		if !ok {
			return nil, Errorf(http.StatusBadRequest, "Unable to find `op` in JSON Schema change. It must be one of the following: add, remove, replace.")
		}
		if json.Unmarshal(rawOp, &op.Op) != nil || (op.Op != "add" && op.Op != "remove" && op.Op != "replace") {
			var shown any
			json.Unmarshal(rawOp, &shown)
			return nil, Errorf(http.StatusBadRequest, "Invalid operation: `%v`. It must be one of the following: add, remove, replace.", shown)
		}
		rawPath, ok := obj["path"]
		if !ok {
			return nil, Errorf(http.StatusBadRequest, "Unable to find '%s' in JSON Schema change", "path")
		}
		var path string
		if json.Unmarshal(rawPath, &path) != nil {
			return nil, Errorf(http.StatusBadRequest, "Pointer `%s` does not start with \"/\".", strings.Trim(string(rawPath), `"`))
		}
		tokens, perr := decodePointer(path)
		if perr != nil {
			return nil, perr
		}
		op.Path = tokens
		if v, ok := obj["value"]; ok {
			op.Value, op.HasValue = v, true
		} else if op.Op != "remove" {
			return nil, Errorf(http.StatusBadRequest, "Operation \"%s\" requires a member named \"value\".", op.Op)
		}
		if e := CheckAttribute(op.Attribute(), false); e != nil {
			return nil, e
		}
		if len(op.Path) != 1 {
			return nil, Errorf(http.StatusBadRequest, "Invalid JSON pointer for this resource: '/%s'", strings.Join(op.Path, "/"))
		}
		ops = append(ops, op)
	}
	return ops, nil
}

// decodePointer splits a JSON pointer into unescaped tokens, refusing what Glance refuses.
func decodePointer(p string) ([]string, *APIError) {
	if !strings.HasPrefix(p, "/") {
		return nil, Errorf(http.StatusBadRequest, "Pointer `%s` does not start with \"/\".", p)
	}
	if strings.Contains(p, "//") {
		return nil, Errorf(http.StatusBadRequest, "Pointer `%s` contains adjacent \"/\".", p)
	}
	if len(p) > 1 && strings.HasSuffix(p, "/") {
		return nil, Errorf(http.StatusBadRequest, "Pointer `%s` end with \"/\".", p)
	}
	parts := strings.Split(p[1:], "/")
	for i, part := range parts {
		for j := 0; j < len(part); j++ {
			if part[j] == '~' && (j+1 == len(part) || (part[j+1] != '0' && part[j+1] != '1')) {
				return nil, Errorf(http.StatusBadRequest, "Pointer `%s` contains \"~\" not part of a recognized escape sequence.", p)
			}
		}
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
	}
	return parts, nil
}
