package store

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"glimpse/api"
)

// callers is how a test acts as a project under one of the authenticated modes.
type callers func(t *testing.T, project, roles string) *client

// authModes runs a test under --auth headers and under --auth tokens, with the same
// projects: p1 to p4 as members, ops as admin.
func authModes(t *testing.T, f func(t *testing.T, as callers, srvURL string)) {
	t.Run("headers", func(t *testing.T) {
		_, srv := newServer(t, AuthHeaders{})
		f(t, func(t *testing.T, project, roles string) *client { return as(t, srv.URL, project, roles) }, srv.URL)
	})
	t.Run("tokens", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "tokens.json")
		var entries []string
		for _, p := range []string{"p1", "p2", "p3", "p4"} {
			entries = append(entries, fmt.Sprintf(`"tok-%s-member": {"project": %q, "user": "u-%s", "roles": ["member"]}`, p, p, p))
		}
		entries = append(entries, `"tok-ops-admin": {"project": "ops", "user": "root", "roles": ["admin", "member"]}`)
		if err := os.WriteFile(file, []byte("{"+strings.Join(entries, ",\n")+"}"), 0o600); err != nil {
			t.Fatal(err)
		}
		auth, err := LoadTokenFile(file)
		if err != nil {
			t.Fatal(err)
		}
		_, srv := newServer(t, auth)
		unknown := withToken(t, srv.URL, "nope")
		expect(t, unknown.do("GET", "/v2/images", nil), 401, "")
		expect(t, withToken(t, srv.URL, "").do("GET", "/v2/images", nil), 401, "")
		f(t, func(t *testing.T, project, roles string) *client {
			role := "member"
			if strings.Contains(roles, "admin") {
				role = "admin"
			}
			return withToken(t, srv.URL, "tok-"+project+"-"+role)
		}, srv.URL)
	})
}

func TestUnauthenticated(t *testing.T) {
	_, srv := newServer(t, AuthHeaders{})
	c := as(t, srv.URL, "", "")
	for _, p := range []string{"/v2/images", "/v2/images/x", "/v2/images/x/file", "/v2/images/x/members"} {
		expect(t, c.do("GET", p, nil), 401, "")
	}
	r := c.do("GET", "/v2/images", nil, "X-Identity-Status", "Invalid", "X-Project-Id", "p1")
	expect(t, r, 401, "")
}

func TestTokenFileErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"notjson":   "tok p1 u1",
		"empty":     "{}",
		"noproject": `{"t": {"user": "u"}}`,
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		if _, err := LoadTokenFile(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestVisibilityAndMembers(t *testing.T) {
	authModes(t, func(t *testing.T, as callers, _ string) {
		p1, p2, p3 := as(t, "p1", "member"), as(t, "p2", "member"), as(t, "p3", "member")
		admin := as(t, "ops", "admin")
		priv := p1.create(`{"name":"priv","visibility":"private","disk_format":"raw","container_format":"bare"}`)
		shared := p1.create(`{"name":"shared","disk_format":"raw","container_format":"bare"}`)
		comm := p1.create(`{"name":"comm","visibility":"community"}`)
		hidden := p1.create(`{"name":"hidden","os_hidden":true}`)
		pub := admin.create(`{"name":"pub","visibility":"public"}`)
		comm3 := p3.create(`{"name":"comm3","visibility":"community"}`)
		_ = hidden
		_ = comm3

		expect(t, p1.upload(shared.ID, []byte("hello, shared world")), 204, "")
		expect(t, p1.upload(priv.ID, []byte("private bytes")), 204, "")

		// Private images of other projects are invisible, data included.
		expect(t, p2.do("GET", "/v2/images/"+priv.ID, nil), 404, "No image found with ID "+priv.ID)
		expect(t, p2.do("GET", "/v2/images/"+priv.ID+"/file", nil), 404, "No image found with ID "+priv.ID)
		expect(t, admin.do("GET", "/v2/images/"+priv.ID, nil), 200, "")
		expect(t, p2.do("GET", "/v2/images/"+pub.ID, nil), 200, "")
		expect(t, p2.do("GET", "/v2/images/"+comm.ID, nil), 200, "")
		expect(t, p2.do("GET", "/v2/images/"+shared.ID, nil), 404, "")
		expect(t, p2.upload(pub.ID, []byte("x")), 403, "Not allowed to upload image data for image "+pub.ID)
		expect(t, p2.do("DELETE", "/v2/images/"+comm.ID, nil), 403, "You do not own this image")
		expect(t, p2.patch(comm.ID, `[{"op":"replace","path":"/name","value":"x"}]`), 403, "You do not own this image")
		expect(t, p2.do("POST", "/v2/images/"+comm.ID+"/actions/deactivate", nil), 403, "You do not own this image")

		sorted := func(s []string) []string { slices.Sort(s); return s }
		check := func(c *client, q string, want ...string) {
			t.Helper()
			if got := sorted(c.names(q)); !slices.Equal(got, sorted(want)) {
				t.Errorf("list %s: %v, want %v", q, got, want)
			}
		}
		check(p1, "", "priv", "shared", "comm", "pub")
		check(p2, "", "pub")
		check(p2, "?visibility=community", "comm", "comm3")
		check(p2, "?visibility=all", "comm", "comm3", "pub")
		check(p1, "?os_hidden=true", "hidden")
		check(admin, "", "priv", "shared", "pub")
		check(admin, "?visibility=all", "priv", "shared", "comm", "comm3", "pub")
		check(admin, "?visibility=private", "priv")

		// Members: only shared images have them; the owner adds, the member decides.
		members := "/v2/images/" + shared.ID + "/members"
		expect(t, p1.do("POST", "/v2/images/"+priv.ID+"/members", `{"member":"p2"}`), 403, "Not allowed to create members for image "+priv.ID+".")
		expect(t, p1.do("GET", "/v2/images/"+priv.ID+"/members", nil), 403, "Not allowed to list members for image "+priv.ID+": Only shared images have members.")
		expect(t, p1.do("POST", members, `{"x":"p2"}`), 400, "Member to be added not specified")
		expect(t, p1.do("POST", members, `{"member":""}`), 400, "Member can't be empty")
		r := p1.do("POST", members, `{"member":"p2"}`)
		var m api.Member
		r.json(t, &m)
		if r.code != 200 || m.MemberID != "p2" || m.ImageID != shared.ID || m.Status != "pending" || m.Schema != "/v2/schemas/member" {
			t.Fatalf("add member: %d %s", r.code, r.body)
		}
		expect(t, p1.do("POST", members, `{"member":"p2"}`), 409, "Member p2 is duplicated for image "+shared.ID)
		expect(t, p1.do("POST", members, `{"member":"p3"}`), 200, "")
		expect(t, p2.do("POST", members, `{"member":"p4"}`), 403, "Not allowed to create members for image "+shared.ID+".")

		// A pending member sees the image, but lists it only when asking for pending ones.
		expect(t, p2.do("GET", "/v2/images/"+shared.ID, nil), 200, "")
		check(p2, "", "pub")
		check(p2, "?member_status=pending", "pub", "shared")
		check(p2, "?member_status=all&visibility=shared", "shared")
		expect(t, p2.do("GET", "/v2/images?member_status=foo", nil), 400, "Invalid status: foo")

		var list struct{ Members []api.Member }
		p1.do("GET", members, nil).json(t, &list)
		if len(list.Members) != 2 {
			t.Fatalf("owner sees %d members", len(list.Members))
		}
		p2.do("GET", members, nil).json(t, &list)
		if len(list.Members) != 1 || list.Members[0].MemberID != "p2" {
			t.Fatalf("member sees %+v", list.Members)
		}
		expect(t, p1.do("GET", members+"/p9", nil), 404, "p9 not found in the member list of the image "+shared.ID+".")
		expect(t, p2.do("GET", members+"/p3", nil), 404, "p3 not found in the member list of the image "+shared.ID+".")
		expect(t, as(t, "p4", "member").do("GET", members, nil), 404, "Image "+shared.ID+" not found.")

		expect(t, p1.do("PUT", members+"/p2", `{"status":"accepted"}`), 403, "Not allowed to update members for image "+shared.ID+".")
		expect(t, p2.do("PUT", members+"/p2", `{}`), 400, "Status not specified")
		expect(t, p2.do("PUT", members+"/p2", `{"status":"foo"}`), 400, `Incorrect request: Status must be "pending", "accepted" or "rejected".`)
		r = p2.do("PUT", members+"/p2", `{"status":"accepted"}`)
		r.json(t, &m)
		if r.code != 200 || m.Status != "accepted" {
			t.Fatalf("accept: %d %s", r.code, r.body)
		}
		check(p2, "", "pub", "shared")
		check(p2, "?visibility=shared", "shared")
		if r := p2.do("GET", "/v2/images/"+shared.ID+"/file", nil); r.code != 200 || string(r.body) != "hello, shared world" {
			t.Fatalf("member download: %d %s", r.code, r.body)
		}
		expect(t, p3.do("PUT", members+"/p3", `{"status":"rejected"}`), 200, "")
		check(p3, "", "pub", "comm3")
		check(p3, "?member_status=rejected", "pub", "shared", "comm3")

		expect(t, p2.do("DELETE", members+"/p2", nil), 403, "Not allowed to delete members for image "+shared.ID+".")
		expect(t, p1.do("DELETE", members+"/p2", nil), 204, "")
		expect(t, p1.do("DELETE", members+"/p2", nil), 404, "")
		expect(t, p2.do("GET", "/v2/images/"+shared.ID, nil), 404, "")
		check(p2, "?visibility=shared")

		// Publicizing needs an admin; communitizing does not.
		expect(t, p1.patch(shared.ID, `[{"op":"replace","path":"/visibility","value":"public"}]`), 403, "You are not authorized to complete publicize_image action.")
		expect(t, p1.patch(shared.ID, `[{"op":"replace","path":"/visibility","value":"community"}]`), 200, "")
		expect(t, admin.patch(shared.ID, `[{"op":"replace","path":"/visibility","value":"public"}]`), 200, "")
		check(p2, "", "pub", "shared")
	})
}

func TestNoneAuthIsAdmin(t *testing.T) {
	_, srv := newServer(t, AuthNone{})
	c := as(t, srv.URL, "", "")
	img := c.create(`{"name":"n","visibility":"public"}`)
	if img.Owner != nil {
		t.Fatalf("owner %q under --auth none (Glance's noauth leaves it null)", *img.Owner)
	}
	if r := c.do("GET", "/v2/images", nil); r.code != http.StatusOK {
		t.Fatal(r.code)
	}
}
