package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestImageJSONRoundTrip(t *testing.T) {
	// An image as Glance Zed shows it, with a free-form property.
	in := `{"foo": "bar", "name": "t1", "disk_format": "qcow2", "container_format": "bare", "visibility": "shared", "size": 11, "virtual_size": null, "status": "active", "checksum": "5eb63bbbe01eeed093cb22bb8f5acdc3", "protected": false, "min_ram": 0, "min_disk": 0, "owner": "p1", "os_hidden": false, "os_hash_algo": "sha512", "os_hash_value": "309e", "id": "6dff82e0-d673-40ab-be00-1518d2424e71", "created_at": "2026-11-27T23:41:27Z", "updated_at": "2026-11-27T23:41:28Z", "tags": ["a"], "self": "/v2/images/6dff82e0-d673-40ab-be00-1518d2424e71", "file": "/v2/images/6dff82e0-d673-40ab-be00-1518d2424e71/file", "schema": "/v2/schemas/image"}`
	var img Image
	if err := json.Unmarshal([]byte(in), &img); err != nil {
		t.Fatal(err)
	}
	if Str(img.Name) != "t1" || *img.Size != 11 || img.VirtualSize != nil || string(img.Properties["foo"]) != `"bar"` || len(img.Properties) != 1 {
		t.Fatalf("decoded %+v", img)
	}
	out, err := json.Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	var a, b map[string]any
	json.Unmarshal([]byte(in), &a)
	json.Unmarshal(out, &b)
	if len(a) != len(b) {
		t.Fatalf("round trip changed the keys:\n%s\n%s", in, out)
	}
	for k, v := range a {
		if vb, _ := json.Marshal(b[k]); string(vb) != func() string { x, _ := json.Marshal(v); return string(x) }() {
			t.Errorf("%s: %v vs %v", k, v, b[k])
		}
	}
}

func TestWriteError(t *testing.T) {
	r := httptest.NewRequest("GET", "/v2/images/x", nil)
	r.Header.Set("Accept", "application/json")
	w := httptest.NewRecorder()
	WriteError(w, r, http.StatusNotFound, "No image found with ID x")
	want := `{"message":"No image found with ID x<br /><br />\n\n\n","code":"404 Not Found","title":"Not Found"}`
	if w.Code != 404 || w.Body.String() != want || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %q", w.Code, w.Body.String())
	}
	if m := ErrorMessage(w.Body.Bytes()); m != "No image found with ID x" {
		t.Fatalf("ErrorMessage: %q", m)
	}
	// Without Accept: JSON, webob's HTML page.
	r.Header.Del("Accept")
	w = httptest.NewRecorder()
	WriteError(w, r, http.StatusRequestedRangeNotSatisfiable, "The Range requested is not available.")
	if !strings.Contains(w.Body.String(), "<h1>416 Request Range Not Satisfiable</h1>") {
		t.Fatalf("%q", w.Body.String())
	}
}
