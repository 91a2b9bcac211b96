package store

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"glimpse/api"
)

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 1 << 20 {
		rand.Read(b[i:min(n, i+1<<20)]) // in pieces: a long vDSO call stalls the GC
	}
	return b
}

func TestVersionsHealthMetricsSchemas(t *testing.T) {
	_, srv := newServer(t, AuthHeaders{})
	anon := as(t, srv.URL, "", "")
	for _, p := range []string{"/", "/versions"} {
		r := anon.do("GET", p, nil)
		if r.code != http.StatusMultipleChoices || !strings.Contains(string(r.body), `"v2.15","status":"CURRENT"`) ||
			!strings.Contains(string(r.body), srv.URL+"/v2/") {
			t.Fatalf("GET %s: %d %s", p, r.code, r.body)
		}
	}
	if r := anon.do("GET", "/healthcheck", nil); r.code != 200 || string(r.body) != "OK" {
		t.Fatalf("healthcheck: %d %s", r.code, r.body)
	}
	m := anon.do("GET", "/metrics", nil)
	for _, want := range []string{"glimpse_store_uploads_total{result=\"refused\"} 0", "glimpse_store_images 0", "glimpse_store_requests_total"} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	expect(t, anon.do("GET", "/v2/schemas/image", nil), 401, "This server could not verify that you are authorized to access the document you requested. Either you supplied the wrong credentials (e.g., bad password), or your browser does not understand how to supply the credentials required.")
	c := as(t, srv.URL, "p1", "member")
	for _, name := range api.SchemaNames {
		r := c.do("GET", "/v2/schemas/"+name, nil)
		want, _ := api.Schema(name)
		if r.code != 200 || string(r.body) != string(want) {
			t.Errorf("schema %s: %d", name, r.code)
		}
	}
	expect(t, c.do("GET", "/v2/schemas/nope", nil), 404, "The resource could not be found.")
	expect(t, c.do("GET", "/v2/nothing", nil), 404, "The resource could not be found.")
	r := c.do("DELETE", "/v2/images", nil)
	if r.code != 405 || !strings.Contains(r.h.Get("Allow"), "GET") {
		t.Fatalf("DELETE /v2/images: %d %v", r.code, r.h)
	}
}

func TestCreateShowDelete(t *testing.T) {
	_, srv := newServer(t, AuthHeaders{})
	c := as(t, srv.URL, "p1", "member")
	img := c.create(`{"name":"a","disk_format":"qcow2","container_format":"bare","min_ram":512,"min_disk":2,
		"protected":false,"tags":["x","y","x"],"os_distro":"debian","k":"v"}`)
	if api.Str(img.Owner) != "p1" || img.Status != "queued" || img.Visibility != "shared" || img.MinRAM != 512 ||
		img.MinDisk != 2 || !slices.Equal(img.Tags, []string{"x", "y"}) || string(img.Properties["k"]) != `"v"` ||
		string(img.Properties["os_distro"]) != `"debian"` || img.Size != nil || img.Checksum != nil ||
		img.Self != "/v2/images/"+img.ID || img.File != img.Self+"/file" || img.Schema != "/v2/schemas/image" {
		t.Fatalf("created %+v", img)
	}
	r := c.do("GET", "/v2/images/"+img.ID, nil)
	if r.code != 200 || r.image(t).ID != img.ID {
		t.Fatalf("show: %d %s", r.code, r.body)
	}
	id := "11111111-2222-4333-8444-555555555555"
	if got := c.create(`{"id":"` + id + `","name":"b"}`); got.ID != id {
		t.Fatalf("id %s", got.ID)
	}
	expect(t, c.do("POST", "/v2/images", `{"id":"`+id+`"}`), 409, "Image ID "+id+" already exists!")

	for _, tc := range []struct {
		body string
		code int
		msg  string
	}{
		{`{"status":"active"}`, 403, "Attribute 'status' is read-only."},
		{`{"size":5}`, 403, "Attribute 'size' is read-only."},
		{`{"self":"x"}`, 403, "Attribute 'self' is read-only."},
		{`{"location":"x"}`, 403, "Access was denied to this resource."},
		{`{"locations":[]}`, 403, "Attribute 'locations' is reserved."},
		{`{"os_glance_x":"y"}`, 403, "Access was denied to this resource."},
		{`{"visibility":"public"}`, 403, "You are not authorized to complete publicize_image action."},
		{`{"owner":"p2"}`, 403, "You are not permitted to create images owned by 'p2'."},
		{`{"disk_format":"foo"}`, 400, "Provided object does not match schema 'image': 'foo' is not one of [None, 'ami', 'ari', 'aki', 'vhd', 'vhdx', 'vmdk', 'raw', 'qcow2', 'vdi', 'iso', 'ploop']"},
		{`{"container_format":"zip"}`, 400, "Provided object does not match schema 'image': 'zip' is not one of [None, 'ami', 'ari', 'aki', 'bare', 'ovf', 'ova', 'docker', 'compressed']"},
		{`{"visibility":"x"}`, 400, "Provided object does not match schema 'image': 'x' is not one of ['community', 'public', 'private', 'shared']"},
		{`{"id":"nope"}`, 400, "Provided object does not match schema 'image': 'nope' does not match '^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$'"},
		{`{"min_ram":"x"}`, 400, "Provided object does not match schema 'image': 'x' is not of type 'integer'"},
		{`{"protected":"yes"}`, 400, "Provided object does not match schema 'image': 'yes' is not of type 'boolean'"},
		{`{"foo":1}`, 400, "Provided object does not match schema 'image': 1 is not of type 'string'"},
		{`{"name":1}`, 400, "Provided object does not match schema 'image': 1 is not of type 'null', 'string'"},
		{`{"tags":"x"}`, 400, "Provided object does not match schema 'image': 'x' is not of type 'array'"},
		{`{"name":"` + strings.Repeat("n", 256) + `"}`, 400, "Provided object does not match schema 'image': '" + strings.Repeat("n", 256) + "' is too long"},
		{`notjson`, 400, "Malformed JSON in request body."},
	} {
		expect(t, c.do("POST", "/v2/images", tc.body), tc.code, tc.msg)
	}
	other := as(t, srv.URL, "p2", "member")
	expect(t, other.do("GET", "/v2/images/"+img.ID, nil), 404, "No image found with ID "+img.ID)
	expect(t, other.do("DELETE", "/v2/images/"+img.ID, nil), 404, "Failed to find image "+img.ID+" to delete")

	prot := c.create(`{"name":"p","protected":true}`)
	expect(t, c.do("DELETE", "/v2/images/"+prot.ID, nil), 403, "Image "+prot.ID+" is protected and cannot be deleted.")
	expect(t, c.patch(prot.ID, `[{"op":"replace","path":"/protected","value":false}]`), 200, "")
	expect(t, c.do("DELETE", "/v2/images/"+prot.ID, nil), 204, "")
	expect(t, c.do("DELETE", "/v2/images/"+prot.ID, nil), 404, "Failed to find image "+prot.ID+" to delete")
	expect(t, c.do("GET", "/v2/images/"+prot.ID, nil), 404, "No image found with ID "+prot.ID)
	// A deleted ID is never reused.
	expect(t, c.do("POST", "/v2/images", `{"id":"`+prot.ID+`"}`), 409, "Image ID "+prot.ID+" already exists!")

	admin := as(t, srv.URL, "ops", "admin")
	pub := admin.create(`{"name":"pub","visibility":"public","owner":"p2"}`)
	if api.Str(pub.Owner) != "p2" || pub.Visibility != "public" {
		t.Fatalf("admin create: %+v", pub)
	}
	expect(t, c.do("DELETE", "/v2/images/"+pub.ID, nil), 403, "You do not own this image")
}

func TestPatch(t *testing.T) {
	_, srv := newServer(t, AuthHeaders{})
	c := as(t, srv.URL, "p1", "member")
	img := c.create(`{"name":"a","foo":"bar","disk_format":"raw","container_format":"bare"}`)
	r := c.patch(img.ID, `[{"op":"replace","path":"/name","value":"b"},{"op":"add","path":"/k1","value":"v1"},
		{"op":"remove","path":"/foo"},{"op":"add","path":"/tags","value":["t1","t2"]},{"op":"replace","path":"/min_disk","value":3},
		{"op":"add","path":"/a~1b","value":"slash"}]`)
	expect(t, r, 200, "")
	got := r.image(t)
	if api.Str(got.Name) != "b" || string(got.Properties["k1"]) != `"v1"` || got.Properties["foo"] != nil ||
		!slices.Equal(got.Tags, []string{"t1", "t2"}) || got.MinDisk != 3 || string(got.Properties["a/b"]) != `"slash"` {
		t.Fatalf("patched: %s", r.body)
	}
	expect(t, c.patch(img.ID, `[{"op":"replace","path":"/name","value":null}]`), 200, "")
	for _, tc := range []struct {
		ops  string
		code int
		msg  string
	}{
		{`[{"op":"replace","path":"/status","value":"active"}]`, 403, "Attribute 'status' is read-only."},
		{`[{"op":"replace","path":"/id","value":"x"}]`, 403, "Attribute 'id' is read-only."},
		{`[{"op":"add","path":"/location","value":"x"}]`, 403, "Attribute 'location' is reserved."},
		{`[{"op":"remove","path":"/nokey"}]`, 409, "There was a conflict when trying to complete your request."},
		{`[{"op":"replace","path":"/nokey","value":"x"}]`, 409, "There was a conflict when trying to complete your request."},
		{`[{"op":"remove","path":"/name"}]`, 403, "Access was denied to this resource."},
		{`[{"op":"move","path":"/name","from":"/x"}]`, 400, "Invalid operation: `move`. It must be one of the following: add, remove, replace."},
		{`[{"path":"/name","value":"x"}]`, 400, "Unable to find `op` in JSON Schema change. It must be one of the following: add, remove, replace."},
		{`[{"op":"replace","path":"/name"}]`, 400, `Operation "replace" requires a member named "value".`},
		{`[{"op":"add","path":"name","value":"x"}]`, 400, "Pointer `name` does not start with \"/\"."},
		{`[{"op":"add","path":"/tags/-","value":"z"}]`, 400, "Invalid JSON pointer for this resource: '/tags/-'"},
		{`[{"op":"add","path":"/a~2","value":"z"}]`, 400, "Pointer `/a~2` contains \"~\" not part of a recognized escape sequence."},
		{`{"op":"remove"}`, 400, "Request body must be a JSON array of operation objects."},
		{`[{"op":"replace","path":"/visibility","value":"public"}]`, 403, "You are not authorized to complete publicize_image action."},
		{`[{"op":"replace","path":"/min_ram","value":"1"}]`, 400, "Provided object does not match schema 'image': '1' is not of type 'integer'"},
		{`[{"op":"replace","path":"/k1","value":null}]`, 400, "Provided object does not match schema 'image': None is not of type 'string'"},
		{`[{"op":"replace","path":"/owner","value":"p2"}]`, 403, "Access was denied to this resource."},
	} {
		expect(t, c.patch(img.ID, tc.ops), tc.code, tc.msg)
	}
	r = c.do("PATCH", "/v2/images/"+img.ID, `[]`)
	if r.code != 415 || !strings.HasPrefix(r.message(), "The request media type application/json is not supported by this server.") {
		t.Fatalf("json content type: %d %s", r.code, r.body)
	}
	missing := "00000000-0000-4000-8000-000000000000"
	expect(t, c.patch(missing, `[]`), 404, "No image found with ID "+missing)
	expect(t, as(t, srv.URL, "p2", "member").patch(img.ID, `[]`), 404, "No image found with ID "+img.ID)
	// Formats are fixed once the image has data.
	if r := c.upload(img.ID, randomBytes(t, 4096)); r.code != 204 {
		t.Fatalf("upload: %d %s", r.code, r.body)
	}
	expect(t, c.patch(img.ID, `[{"op":"replace","path":"/disk_format","value":"qcow2"}]`), 403, "Access was denied to this resource.")
	admin := as(t, srv.URL, "ops", "admin")
	r = admin.patch(img.ID, `[{"op":"replace","path":"/owner","value":"p2"},{"op":"replace","path":"/visibility","value":"public"}]`)
	if got := r.image(t); r.code != 200 || api.Str(got.Owner) != "p2" || got.Visibility != "public" {
		t.Fatalf("admin patch: %d %s", r.code, r.body)
	}
}

func TestUploadDownload(t *testing.T) {
	st, srv := newServer(t, AuthHeaders{})
	c := as(t, srv.URL, "p1", "member")
	img := c.create(`{"name":"a","disk_format":"raw","container_format":"bare"}`)
	expect(t, c.do("GET", "/v2/images/"+img.ID+"/file", nil), 204, "")
	data := randomBytes(t, 3<<20+17)
	r := c.do("PUT", "/v2/images/"+img.ID+"/file", string(data), "Content-Type", "text/plain")
	if r.code != 415 || !strings.HasPrefix(r.message(), "The request media type text/plain is not supported") {
		t.Fatalf("text/plain upload: %d %s", r.code, r.body)
	}
	expect(t, c.upload(img.ID, data), 204, "")
	got := c.do("GET", "/v2/images/"+img.ID, nil).image(t)
	sum := md5.Sum(data)
	sha := sha512.Sum512(data)
	if got.Status != "active" || *got.Size != int64(len(data)) || *got.VirtualSize != int64(len(data)+511)/512*512 || // qemu rounds raw up to sectors

		api.Str(got.Checksum) != hex.EncodeToString(sum[:]) || api.Str(got.OSHashAlgo) != "sha512" ||
		api.Str(got.OSHashValue) != hex.EncodeToString(sha[:]) {
		t.Fatalf("after upload: size %d virtual %d checksum %s hash %s", *got.Size, *got.VirtualSize, api.Str(got.Checksum), api.Str(got.OSHashValue))
	}
	expect(t, c.upload(img.ID, data), 409, "Image status transition from active to saving is not allowed")

	r = c.do("GET", "/v2/images/"+img.ID+"/file", nil)
	if r.code != 200 || string(r.body) != string(data) || r.h.Get("Content-MD5") != hex.EncodeToString(sum[:]) ||
		r.h.Get("Content-Length") != fmt.Sprint(len(data)) || r.h.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("download: %d %v", r.code, r.h)
	}
	size := len(data)
	for _, tc := range []struct {
		rng        string
		code       int
		from, to   int
		wantDetail string
	}{
		{"bytes=10-19", 206, 10, 19, ""},
		{"bytes=100-", 206, 100, size - 1, ""},
		{"bytes=-10", 206, size - 10, size - 1, ""},
		{"bytes=-99999999", 206, 0, size - 1, ""},
		{"bytes=100-99999999", 206, 100, size - 1, ""},
		{"bytes=0-0", 206, 0, 0, ""},
		{fmt.Sprintf("bytes=%d-", size), 416, 0, 0, fmt.Sprintf("Invalid start position in Range header. Start position MUST be in the inclusive range [0, %d].", size-1)},
		{"bytes=5-3", 416, 0, 0, "Invalid Range header."},
		{"garbage", 416, 0, 0, "Invalid Range header."},
		{"items=0-5", 416, 0, 0, "Invalid Range header."},
		{"bytes=0-1,5-6", 400, 0, 0, ""},
	} {
		r := c.do("GET", "/v2/images/"+img.ID+"/file", nil, "Range", tc.rng)
		if r.code != tc.code {
			t.Fatalf("Range %s: %d %s", tc.rng, r.code, r.body)
		}
		switch tc.code {
		case 206:
			want := fmt.Sprintf("bytes %d-%d/%d", tc.from, tc.to, size)
			if r.h.Get("Content-Range") != want || string(r.body) != string(data[tc.from:tc.to+1]) || r.h.Get("Content-MD5") == "" {
				t.Fatalf("Range %s: Content-Range %q, want %q", tc.rng, r.h.Get("Content-Range"), want)
			}
		case 416:
			if !strings.Contains(string(r.body), tc.wantDetail) || r.message() != "The Range requested is not available." {
				t.Fatalf("Range %s: %s", tc.rng, r.body)
			}
		case 400:
			if r.message() != "Requests with multiple ranges are not supported in Glance. You may make multiple single-range requests instead." {
				t.Fatalf("Range %s: %s", tc.rng, r.body)
			}
		}
	}
	r = c.do("HEAD", "/v2/images/"+img.ID+"/file", nil)
	if r.code != 405 || r.h.Get("Allow") != "GET, PUT" {
		t.Fatalf("HEAD: %d %v", r.code, r.h)
	}

	noFmt := c.create(`{"name":"nofmt"}`)
	expect(t, c.upload(noFmt.ID, data[:10]), 400, "Properties disk_format, container_format must be set prior to saving data.")
	c.patch(noFmt.ID, `[{"op":"add","path":"/disk_format","value":"raw"}]`)
	expect(t, c.upload(noFmt.ID, data[:10]), 400, "Property container_format must be set prior to saving data.")

	// Deactivation: the owner (not admin) may not download; an admin may.
	expect(t, c.do("POST", "/v2/images/"+noFmt.ID+"/actions/deactivate", nil), 403, "Not allowed to deactivate image in status 'queued'")
	expect(t, c.do("POST", "/v2/images/"+noFmt.ID+"/actions/reactivate", nil), 403, "Not allowed to reactivate image in status 'queued'")
	expect(t, c.do("POST", "/v2/images/"+img.ID+"/actions/deactivate", nil), 204, "")
	expect(t, c.do("POST", "/v2/images/"+img.ID+"/actions/deactivate", nil), 204, "")
	expect(t, c.do("GET", "/v2/images/"+img.ID+"/file", nil), 403, "The requested image has been deactivated. Image data download is forbidden.")
	if r := as(t, srv.URL, "ops", "admin").do("GET", "/v2/images/"+img.ID+"/file", nil); r.code != 200 || len(r.body) != size {
		t.Fatalf("admin download of a deactivated image: %d", r.code)
	}
	expect(t, c.do("POST", "/v2/images/"+img.ID+"/actions/reactivate", nil), 204, "")
	expect(t, c.do("POST", "/v2/images/"+img.ID+"/actions/nope", nil), 404, "The resource could not be found.")
	expect(t, c.do("GET", "/v2/images/"+img.ID+"/file", nil), 200, "")

	// Delete removes the data.
	path := filepath.Join(st.imgDir, img.ID)
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	expect(t, c.do("DELETE", "/v2/images/"+img.ID, nil), 204, "")
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("data still there after delete: %v", err)
	}
	expect(t, c.do("GET", "/v2/images/"+img.ID+"/file", nil), 404, "No image found with ID "+img.ID)
}

func TestMaxImageSize(t *testing.T) {
	_, srv := newServer(t, AuthNone{}, func(c *Config) { c.MaxImageSize = 1 << 20; c.Policy.MaxVirtualSize = 1 << 20 })
	c := as(t, srv.URL, "", "")
	img := c.create(`{"name":"big","disk_format":"raw","container_format":"bare"}`)
	r := c.upload(img.ID, randomBytes(t, 3<<20))
	if r.code != 413 || !strings.HasPrefix(r.message(), "The incoming image is too large") {
		t.Fatalf("too large: %d %s", r.code, r.body)
	}
	if got := c.do("GET", "/v2/images/"+img.ID, nil).image(t); got.Status != "queued" {
		t.Fatalf("status %s after a refused upload", got.Status)
	}
	expect(t, c.upload(img.ID, randomBytes(t, 1<<20)), 204, "")
}

func TestTags(t *testing.T) {
	_, srv := newServer(t, AuthHeaders{})
	c := as(t, srv.URL, "p1", "member")
	img := as(t, srv.URL, "ops", "admin").create(`{"name":"a","visibility":"public","owner":"p1"}`)
	expect(t, c.do("PUT", "/v2/images/"+img.ID+"/tags/foo", nil), 204, "")
	expect(t, c.do("PUT", "/v2/images/"+img.ID+"/tags/foo", nil), 204, "")
	expect(t, c.do("PUT", "/v2/images/"+img.ID+"/tags/bar", nil), 204, "")
	if got := c.do("GET", "/v2/images/"+img.ID, nil).image(t); !slices.Equal(got.Tags, []string{"foo", "bar"}) {
		t.Fatalf("tags %v", got.Tags)
	}
	expect(t, c.do("DELETE", "/v2/images/"+img.ID+"/tags/foo", nil), 204, "")
	expect(t, c.do("DELETE", "/v2/images/"+img.ID+"/tags/foo", nil), 404, "The resource could not be found.")
	long := strings.Repeat("x", 256)
	expect(t, c.do("PUT", "/v2/images/"+img.ID+"/tags/"+long, nil), 400, "Provided object does not match schema 'image': '"+long+"' is too long")
	other := as(t, srv.URL, "p2", "member")
	expect(t, other.do("PUT", "/v2/images/"+img.ID+"/tags/x", nil), 403, "Not allowed to update tags for image "+img.ID+".")
	missing := "00000000-0000-4000-8000-000000000000"
	expect(t, c.do("PUT", "/v2/images/"+missing+"/tags/x", nil), 404, "No image found with ID "+missing)
}

func TestImportNotOffered(t *testing.T) {
	_, srv := newServer(t, AuthNone{})
	c := as(t, srv.URL, "", "")
	r := c.do("GET", "/v2/info/import", nil)
	if r.code != 200 || !strings.Contains(string(r.body), `"value":[]`) {
		t.Fatalf("info/import: %d %s", r.code, r.body)
	}
	img := c.create(`{"name":"a","disk_format":"raw","container_format":"bare"}`)
	expect(t, c.do("PUT", "/v2/images/"+img.ID+"/stage", []byte("x")), 404, "")
	expect(t, c.do("POST", "/v2/images/"+img.ID+"/import", `{"method":{"name":"glance-direct"}}`), 400, "")
}
