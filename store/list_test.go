package store

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"glimpse/api"
)

func TestListFiltersSortPaging(t *testing.T) {
	_, srv := newServer(t, AuthHeaders{})
	c := as(t, srv.URL, "p1", "member")
	admin := as(t, srv.URL, "ops", "admin")
	mk := func(body string) api.Image { return c.create(body) }
	a := mk(`{"name":"alpha","disk_format":"raw","container_format":"bare","tags":["red","big"],"os_distro":"debian","min_ram":512}`)
	b := mk(`{"name":"beta","disk_format":"qcow2","container_format":"bare","tags":["red"],"os_distro":"ubuntu","protected":true}`)
	g := mk(`{"name":"gamma","disk_format":"vmdk","container_format":"ova","tags":["blue"]}`)
	n := mk(`{"disk_format":"raw","container_format":"bare"}`) // no name
	expect(t, c.upload(a.ID, randomBytes(t, 1000)), 204, "")
	expect(t, c.upload(n.ID, randomBytes(t, 5000)), 204, "")
	admin.create(`{"name":"other","owner":"p2"}`)
	_, _ = b, g

	check := func(q string, want ...string) {
		t.Helper()
		got := c.names(q)
		if want == nil {
			want = []string{}
		}
		if !slices.Equal(got, want) {
			t.Errorf("list %s: %v, want %v", q, got, want)
		}
	}
	byName := "&sort_key=name&sort_dir=asc"
	check("?name=alpha", "alpha")
	check("?name=in:alpha,gamma"+byName, "alpha", "gamma")
	check(`?name=in:"alpha",beta`+byName, "alpha", "beta")
	check("?status=active"+byName, "", "alpha")
	check("?status=queued"+byName, "beta", "gamma")
	check("?status=foo")
	check("?disk_format=raw"+byName, "", "alpha")
	check("?container_format=ova", "gamma")
	check("?tag=red"+byName, "alpha", "beta")
	check("?tag=red&tag=big", "alpha")
	check("?tag=nope")
	check("?os_distro=debian", "alpha")
	check("?os_distro=debian&name=beta")
	check("?protected=true", "beta")
	check("?protected=false"+byName, "", "alpha", "gamma")
	check("?size_min=2000", "")
	check("?size_max=2000", "alpha")
	check("?size_min=1000&size_max=5000"+byName, "", "alpha")
	check("?min_ram=512", "alpha")
	check("?owner=p1"+byName, "", "alpha", "beta", "gamma")
	check("?visibility=shared&sort=name:asc", "", "alpha", "beta", "gamma")
	check("?created_at=gte:2000-01-01T00:00:00Z"+byName, "", "alpha", "beta", "gamma")
	check("?created_at=lt:2000-01-01T00:00:00Z")
	check("?id="+a.ID, "alpha")

	// Sorting: NULL names first ascending, last descending; sort= defaults to desc.
	check("?sort_key=name&sort_dir=asc", "", "alpha", "beta", "gamma")
	check("?sort_key=name&sort_dir=desc", "gamma", "beta", "alpha", "")
	check("?sort=name", "gamma", "beta", "alpha", "")
	check("?sort=status:desc,name:asc", "beta", "gamma", "", "alpha")
	check("?sort_key=status&sort_key=name&sort_dir=asc&sort_dir=desc", "alpha", "", "gamma", "beta")
	check("?sort_key=size&sort_dir=desc&sort_key=name", "", "alpha", "gamma", "beta")

	for q, msg := range map[string]string{
		"?limit=x":                   "limit param must be an integer",
		"?limit=-1":                  "limit param must be positive",
		"?sort_key=foo":              "Invalid sort key: foo. It must be one of the following: name, status, container_format, disk_format, size, id, created_at, updated_at.",
		"?sort_dir=up":               "Invalid sort direction: up",
		"?sort=name:up":              "Invalid sort direction: up",
		"?sort=name:asc&sort_key=id": "Old and new sorting syntax cannot be combined",
		"?visibility=foo":            "Invalid visibility value: foo",
		"?size_min=x":                "Unable to filter on a range with a non-numeric value.",
		"?protected=maybe":           "Invalid value 'maybe' for 'protected' filter. Valid values are 'true' or 'false'.",
		"?os_hidden=maybe":           "Invalid value 'maybe' for 'os_hidden' filter. Valid values are 'true' or 'false'.",
		"?marker=nope":               "No image found with ID nope",
		"?sort_key=name&sort_key=id&sort_dir=asc&sort_dir=desc&sort_dir=asc": "Number of sort dirs does not match the number of sort keys",
	} {
		expect(t, c.do("GET", "/v2/images"+q, nil), 400, msg)
	}

	// Paging: every page but the last links to the next one; the links keep the query.
	for _, q := range []string{"sort_key=name&sort_dir=asc", "sort=name:desc,id", "", "sort_key=size&sort_dir=asc"} {
		var all []string
		next := "/v2/images?limit=1"
		if q != "" {
			next += "&" + q
		}
		want := c.names("?" + q)
		for page := 0; next != ""; page++ {
			if page > 10 {
				t.Fatalf("%s: too many pages", q)
			}
			r := c.do("GET", next, nil)
			var body struct {
				Images []api.Image
				First  string
				Next   string
				Schema string
			}
			r.json(t, &body)
			if body.Schema != "/v2/schemas/images" || !strings.HasPrefix(body.First, "/v2/images?limit=1") {
				t.Fatalf("%s: %s", next, r.body)
			}
			for _, img := range body.Images {
				all = append(all, api.Str(img.Name))
			}
			if body.Next != "" {
				u, _ := url.Parse(body.Next)
				if u.Query().Get("limit") != "1" || u.Query().Get("marker") != body.Images[0].ID {
					t.Fatalf("next %s", body.Next)
				}
			}
			next = body.Next
		}
		if !slices.Equal(all, want) {
			t.Errorf("paging %q: %v, want %v", q, all, want)
		}
	}
	var body struct{ First, Next string }
	c.do("GET", "/v2/images?limit=2&tag=x&tag=red&sort=name:asc,id&name=a", nil).json(t, &body)
	if body.First != "/v2/images?limit=2&tag=red&sort=name%3Aasc%2Cid&name=a" || body.Next != "" {
		t.Errorf("links: %+v", body)
	}
	_ = fmt.Sprint
}

func TestListManyImages(t *testing.T) {
	st, srv := newServer(t, AuthNone{})
	c := as(t, srv.URL, "", "")
	const n = 2500
	if err := fillImages(st, n, "p1"); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	next := "/v2/images?limit=1000&sort=name:asc"
	for next != "" {
		var body struct {
			Images []api.Image
			Next   string
		}
		c.do("GET", next, nil).json(t, &body)
		for _, img := range body.Images {
			if seen[img.ID] {
				t.Fatalf("image %s twice", img.ID)
			}
			seen[img.ID] = true
		}
		next = body.Next
	}
	if len(seen) != n {
		t.Fatalf("%d images listed, want %d", len(seen), n)
	}
	if got := c.names("?limit=1"); len(got) != 1 {
		t.Fatal(got)
	}
	if got := c.names(""); len(got) != defaultLimit {
		t.Fatalf("default page %d", len(got))
	}
}
