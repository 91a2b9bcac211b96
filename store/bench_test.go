package store

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"

	"glimpse/api"
)

// BenchmarkUpload measures an upload of 256 MiB through HTTP: hashing, inspection, the
// write and the final fsync.
func BenchmarkUpload(b *testing.B) {
	_, srv := newServer(b, AuthNone{})
	c := as(b, srv.URL, "", "")
	data := randomBytes(b, 256<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		img := c.create(`{"name":"bench","disk_format":"raw","container_format":"bare"}`)
		b.StartTimer()
		if r := c.upload(img.ID, data); r.code != 204 {
			b.Fatalf("%d %s", r.code, r.body)
		}
		b.StopTimer()
		c.do("DELETE", "/v2/images/"+img.ID, nil)
		b.StartTimer()
	}
}

// BenchmarkDownload measures a download of 256 MiB through HTTP.
func BenchmarkDownload(b *testing.B) {
	_, srv := newServer(b, AuthNone{})
	c := as(b, srv.URL, "", "")
	data := randomBytes(b, 256<<20)
	img := c.create(`{"name":"bench","disk_format":"raw","container_format":"bare"}`)
	if r := c.upload(img.ID, data); r.code != 204 {
		b.Fatal(r.code)
	}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := http.Get(srv.URL + "/v2/images/" + img.ID + "/file")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if n != int64(len(data)) {
			b.Fatal(n)
		}
	}
}

// BenchmarkList10000 measures list calls over 10,000 images: the default page, a page of
// 1000, a property filter, and a page deep into a sorted listing.
func BenchmarkList10000(b *testing.B) {
	st, srv := newServer(b, AuthHeaders{})
	if err := fillImages(st, 10000, "p1"); err != nil {
		b.Fatal(err)
	}
	c := as(b, srv.URL, "p1", "member")
	var body struct{ Images []api.Image }
	c.do("GET", "/v2/images?limit=1&sort_key=name&sort_dir=asc&marker=", nil)
	mid := c.do("GET", "/v2/images?limit=1000&sort_key=name&sort_dir=asc", nil)
	mid.json(b, &body)
	marker := body.Images[999].ID
	for _, q := range []string{"", "?limit=1000", "?i=5000", "?tag=t3&limit=100", "?sort_key=name&sort_dir=asc&limit=25&marker=" + marker, "?name=img-07777"} {
		b.Run(fmt.Sprintf("query=%q", q), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				r := c.do("GET", "/v2/images"+q, nil)
				if r.code != 200 || !bytes.Contains(r.body, []byte(`"images"`)) {
					b.Fatal(r.code)
				}
			}
		})
	}
}
