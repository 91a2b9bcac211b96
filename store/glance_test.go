package store

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"glimpse/api"
	"glimpse/internal/qemutest"
)

// A real Glance (Debian's glance-api, OpenStack Zed) started by ../shared/glance/glance-server
// in identity-headers mode, once for the package; TestMain stops it.
var glance struct {
	once  sync.Once
	url   string
	state string
	err   error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if glance.state != "" {
		exec.Command(glanceScript(), "stop", glance.state).Run()
		os.RemoveAll(glance.state)
	}
	os.Exit(code)
}

// glanceScript is $GLANCE_SERVER or ../shared/glance/glance-server beside the checkout.
func glanceScript() string {
	if s := os.Getenv("GLANCE_SERVER"); s != "" {
		return s
	}
	if d := qemutest.SharedDirOrEmpty(); d != "" {
		return filepath.Join(d, "glance", "glance-server")
	}
	return "glance-server"
}

// realGlance returns the URL of the package's Glance, starting it on first use. Off CI a
// Glance that cannot start skips the test; under CI=true it fails it.
func realGlance(t *testing.T) string {
	t.Helper()
	glance.once.Do(func() {
		script := glanceScript()
		if _, err := os.Stat(script); err != nil {
			glance.err = fmt.Errorf("%s not found (set GLANCE_SERVER): %w", script, err)
			return
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			glance.err = err
			return
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		state, err := os.MkdirTemp("", "glimpse-store-glance-")
		if err != nil {
			glance.err = err
			return
		}
		glance.state = state
		out, err := exec.Command(script, "start", state, fmt.Sprint(port)).CombinedOutput()
		if err != nil {
			glance.err = fmt.Errorf("%s start: %v\n%s", script, err, out)
			return
		}
		glance.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	})
	if glance.err != nil {
		msg := "a real Glance is needed to compare with: " + glance.err.Error()
		if qemutest.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return glance.url
}

// outcome is what one step of a scenario answered, reduced to what must agree.
type outcome struct {
	step    string
	code    int
	message string
	keys    string
}

// target runs a scenario's steps against one server and records the outcomes.
type target struct {
	t    *testing.T
	base string
	out  []outcome
}

func (tg *target) as(project, roles string) *client { return as(tg.t, tg.base, project, roles) }

// step records the outcome of a request; keys extracts the fields to compare.
func (tg *target) step(name string, r *resp, keys func(*resp) string) *resp {
	msg := r.message()
	// Glance adds jsonschema's account of the schema after the first line; glimpse does not.
	msg, _, _ = strings.Cut(msg, "\n\nFailed validating")
	o := outcome{step: name, code: r.code, message: msg}
	if keys != nil && r.code < 300 {
		o.keys = keys(r)
	}
	tg.out = append(tg.out, o)
	return r
}

// imageKeys are the attributes of an image both servers must agree on.
func imageKeys(r *resp) string {
	var m map[string]any
	json.Unmarshal(r.body, &m)
	delete(m, "created_at")
	delete(m, "updated_at")
	delete(m, "virtual_size") // Zed does not compute it; glimpse does
	if tags, ok := m["tags"].([]any); ok {
		slices.SortFunc(tags, func(a, b any) int { return strings.Compare(a.(string), b.(string)) })
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func memberKeys(r *resp) string {
	var m map[string]any
	json.Unmarshal(r.body, &m)
	return fmt.Sprint(m["image_id"], m["member_id"], m["status"], m["schema"])
}

func listKeys(r *resp) string {
	var body struct {
		Images []map[string]any
		First  string
		Next   string
	}
	json.Unmarshal(r.body, &body)
	var names []string
	for _, img := range body.Images {
		names = append(names, fmt.Sprint(img["name"]))
	}
	next := "no next"
	if body.Next != "" {
		next = "next"
	}
	return fmt.Sprint(names, " ", body.First, " ", next)
}

func headerKeys(names ...string) func(*resp) string {
	return func(r *resp) string {
		var parts []string
		for _, n := range names {
			if n == "Content-Length" && r.code == 204 {
				// Glance sends "Content-Length: 0" with a 204; Go's server omits it, as
				// RFC 9110 asks (a 204 has no content).
				continue
			}
			parts = append(parts, n+"="+r.h.Get(n))
		}
		return strings.Join(parts, " ") + fmt.Sprintf(" body=%d bytes", len(r.body))
	}
}

// scenario is the request sequence run against both servers. ids are image IDs chosen by
// the caller, so that both servers hold the same images; projects are unique to the run.
func scenario(tg *target, ids []string, pr string, data []byte) {
	p1, p2, p3 := tg.as(pr+"1", "member"), tg.as(pr+"2", "member"), tg.as(pr+"3", "member")
	admin := tg.as(pr+"admin", "admin")
	anon := tg.as("", "")
	a, b, cc, d := ids[0], ids[1], ids[2], ids[3]
	img := func(id string) string { return "/v2/images/" + id }

	tg.step("unauthenticated list", anon.do("GET", "/v2/images", nil), nil)
	for _, s := range api.SchemaNames {
		tg.step("schema "+s, p1.do("GET", "/v2/schemas/"+s, nil), func(r *resp) string { return string(r.body) })
	}
	tg.step("create a", p1.do("POST", "/v2/images", `{"id":"`+a+`","name":"alpha","disk_format":"raw","container_format":"bare",
		"tags":["red","big"],"os_distro":"debian","min_ram":512,"k":"v"}`), imageKeys)
	tg.step("create b", p1.do("POST", "/v2/images", `{"id":"`+b+`","name":"beta","disk_format":"qcow2","container_format":"bare","protected":true,"tags":["red"]}`), imageKeys)
	tg.step("create c", p1.do("POST", "/v2/images", `{"id":"`+cc+`","name":"gamma","visibility":"community"}`), imageKeys)
	tg.step("create d", p1.do("POST", "/v2/images", `{"id":"`+d+`","name":"delta","visibility":"private","disk_format":"raw","container_format":"bare"}`), imageKeys)
	for _, body := range []string{
		`{"id":"` + a + `"}`, `{"name":"x","status":"active"}`, `{"name":"x","disk_format":"foo"}`,
		`{"name":"x","visibility":"public"}`, `{"name":"x","location":"x"}`, `{"name":"x","locations":[]}`,
		`{"name":"x","owner":"someone"}`, `{"name":"x","id":"nope"}`, `{"name":"x","min_ram":"x"}`,
		`{"name":"x","foo":1}`, `{"name":"x","tags":"x"}`, `notjson`, `{"name":"x","os_glance_x":"y"}`,
		`{"name":"x","checksum":"abc"}`, `{"name":1}`,
	} {
		tg.step("create "+body, p1.do("POST", "/v2/images", body), nil)
	}
	tg.step("show a", p1.do("GET", img(a), nil), imageKeys)
	tg.step("show a as p2", p2.do("GET", img(a), nil), nil)
	tg.step("show missing", p1.do("GET", img("00000000-0000-4000-8000-000000000000"), nil), nil)

	tg.step("patch a", p1.patch(a, `[{"op":"replace","path":"/name","value":"alpha2"},{"op":"add","path":"/k1","value":"v1"},
		{"op":"remove","path":"/k"},{"op":"add","path":"/tags","value":["red","big","new"]},{"op":"replace","path":"/min_disk","value":2}]`), imageKeys)
	for _, ops := range []string{
		`[{"op":"replace","path":"/status","value":"active"}]`, `[{"op":"remove","path":"/nokey"}]`,
		`[{"op":"replace","path":"/nokey","value":"x"}]`, `[{"op":"move","path":"/name","from":"/x"}]`,
		`[{"op":"replace","path":"/visibility","value":"public"}]`, `[{"op":"replace","path":"/min_ram","value":"1"}]`,
		`[{"op":"add","path":"/tags/-","value":"z"}]`, `[{"op":"replace","path":"/id","value":"x"}]`,
		`[{"op":"replace","path":"/owner","value":"p2"}]`, `[{"op":"remove","path":"/name"}]`, `{"op":"remove"}`,
		`[{"op":"add","path":"name","value":"x"}]`, `[{"op":"add","path":"/location","value":"x"}]`,
		`[{"op":"replace","path":"/name"}]`, `[{"path":"/name","value":"x"}]`, `[{"op":"add","path":"/k1/x","value":"v2"}]`,
		`[{"op":"replace","path":"/k1","value":null}]`, `[]`,
	} {
		tg.step("patch "+ops, p1.patch(a, ops), nil)
	}
	tg.step("patch json", p1.do("PATCH", img(a), `[]`), nil)
	tg.step("patch as p2", p2.patch(a, `[]`), nil)

	tg.step("upload text/plain", p1.do("PUT", img(a)+"/file", string(data), "Content-Type", "text/plain"), nil)
	tg.step("upload c without formats", p1.upload(cc, data), nil)
	tg.step("download before upload", p1.do("GET", img(a)+"/file", nil), headerKeys("Content-Length"))
	tg.step("upload a", p1.upload(a, data), headerKeys("Content-Type", "Content-Length"))
	tg.step("show a after upload", p1.do("GET", img(a), nil), imageKeys)
	tg.step("upload a again", p1.upload(a, data), nil)
	tg.step("download a", p1.do("GET", img(a)+"/file", nil), headerKeys("Content-Type", "Content-MD5", "Content-Length"))
	for _, rng := range []string{"bytes=10-19", "bytes=100-", "bytes=-10", "bytes=-99999999", "bytes=100-99999999",
		fmt.Sprintf("bytes=%d-", len(data)), "bytes=5-3", "garbage", "bytes=0-1,5-6"} {
		tg.step("range "+rng, p1.do("GET", img(a)+"/file", nil, "Range", rng), headerKeys("Content-Range", "Content-MD5", "Content-Length"))
	}
	tg.step("HEAD file", p1.do("HEAD", img(a)+"/file", nil), nil)

	// Members and visibility.
	tg.step("members of private d", p1.do("POST", img(d)+"/members", `{"member":"`+pr+`2"}`), nil)
	tg.step("list members of private d", p1.do("GET", img(d)+"/members", nil), nil)
	tg.step("add member p2", p1.do("POST", img(a)+"/members", `{"member":"`+pr+`2"}`), memberKeys)
	tg.step("add member p2 again", p1.do("POST", img(a)+"/members", `{"member":"`+pr+`2"}`), nil)
	tg.step("add member without member", p1.do("POST", img(a)+"/members", `{"x":"y"}`), nil)
	tg.step("add empty member", p1.do("POST", img(a)+"/members", `{"member":""}`), nil)
	tg.step("show member", p1.do("GET", img(a)+"/members/"+pr+"2", nil), memberKeys)
	tg.step("show missing member", p1.do("GET", img(a)+"/members/"+pr+"9", nil), nil)
	tg.step("members as p3", p3.do("GET", img(a)+"/members", nil), nil)
	tg.step("pending member shows a", p2.do("GET", img(a), nil), imageKeys)
	tg.step("pending member list", p2.do("GET", "/v2/images?sort_key=name&sort_dir=asc", nil), listKeys)
	tg.step("pending member list pending", p2.do("GET", "/v2/images?member_status=pending&sort_key=name&sort_dir=asc", nil), listKeys)
	tg.step("owner updates member", p1.do("PUT", img(a)+"/members/"+pr+"2", `{"status":"accepted"}`), nil)
	tg.step("member status missing", p2.do("PUT", img(a)+"/members/"+pr+"2", `{}`), nil)
	tg.step("member status bad", p2.do("PUT", img(a)+"/members/"+pr+"2", `{"status":"foo"}`), nil)
	tg.step("member accepts", p2.do("PUT", img(a)+"/members/"+pr+"2", `{"status":"accepted"}`), memberKeys)
	tg.step("member adds member", p2.do("POST", img(a)+"/members", `{"member":"`+pr+`3"}`), nil)
	tg.step("member lists members", p2.do("GET", img(a)+"/members", nil), func(r *resp) string { return fmt.Sprint(len(r.body) > 0) })
	tg.step("member downloads", p2.do("GET", img(a)+"/file", nil), headerKeys("Content-MD5", "Content-Length"))
	tg.step("member deletes membership", p2.do("DELETE", img(a)+"/members/"+pr+"2", nil), nil)
	tg.step("member patches", p2.patch(a, `[{"op":"replace","path":"/name","value":"zz"}]`), nil)
	tg.step("member deletes", p2.do("DELETE", img(a), nil), nil)
	tg.step("member tags", p2.do("PUT", img(a)+"/tags/foo", nil), nil)
	tg.step("member uploads", p2.upload(b, data), nil)
	tg.step("member deactivates", p2.do("POST", img(a)+"/actions/deactivate", nil), nil)
	for _, q := range []string{"", "?visibility=all", "?visibility=community", "?visibility=shared", "?visibility=private", "?member_status=all"} {
		sep := "?"
		if q != "" {
			sep = "&"
		}
		q += sep + "sort_key=name&sort_dir=asc"
		tg.step("p2 list "+q, p2.do("GET", "/v2/images"+q, nil), listKeys)
		tg.step("p1 list "+q, p1.do("GET", "/v2/images"+q, nil), listKeys)
		tg.step("admin list "+q, admin.do("GET", "/v2/images"+q, nil), listKeys)
	}
	for _, q := range []string{
		"?name=alpha2", "?name=in:alpha2,gamma&sort=name:asc", "?tag=red&sort=name:asc", "?tag=red&tag=big", "?os_distro=debian",
		"?status=active", "?status=queued&sort=name:desc", "?disk_format=raw&sort=name:asc", "?protected=true",
		"?size_min=1&size_max=999999999", "?size_min=x", "?limit=x", "?limit=-1", "?sort_key=foo", "?sort_dir=up",
		"?sort=name:up", "?sort=name:asc&sort_key=name", "?visibility=foo", "?member_status=foo", "?protected=maybe",
		"?os_hidden=maybe", "?marker=nope", "?limit=1&sort=name:asc", "?limit=2&sort_key=name&sort_dir=asc&tag=x&tag=red",
		"?sort=status:desc,name", "?sort_key=name&sort_key=status&sort_dir=asc&sort_dir=desc",
		"?sort_key=name&sort_key=status&sort_dir=asc&sort_dir=desc&sort_dir=asc", "?marker=" + a + "&sort_key=name&sort_dir=asc",
	} {
		tg.step("list "+q, p1.do("GET", "/v2/images"+q, nil), listKeys)
	}

	// Tags.
	tg.step("add tag", p1.do("PUT", img(a)+"/tags/foo", nil), nil)
	tg.step("add tag again", p1.do("PUT", img(a)+"/tags/foo", nil), nil)
	tg.step("delete missing tag", p1.do("DELETE", img(a)+"/tags/nope", nil), nil)
	tg.step("delete tag", p1.do("DELETE", img(a)+"/tags/foo", nil), nil)
	tg.step("show after tags", p1.do("GET", img(a), nil), imageKeys)

	// Actions.
	tg.step("deactivate queued", p1.do("POST", img(d)+"/actions/deactivate", nil), nil)
	tg.step("reactivate queued", p1.do("POST", img(d)+"/actions/reactivate", nil), nil)
	tg.step("deactivate", p1.do("POST", img(a)+"/actions/deactivate", nil), nil)
	tg.step("deactivate again", p1.do("POST", img(a)+"/actions/deactivate", nil), nil)
	tg.step("download deactivated", p1.do("GET", img(a)+"/file", nil), nil)
	tg.step("admin downloads deactivated", admin.do("GET", img(a)+"/file", nil), headerKeys("Content-MD5"))
	tg.step("show deactivated", p1.do("GET", img(a), nil), imageKeys)
	tg.step("reactivate", p1.do("POST", img(a)+"/actions/reactivate", nil), nil)
	tg.step("unknown action", p1.do("POST", img(a)+"/actions/foo", nil), nil)

	// Delete.
	tg.step("delete protected", p1.do("DELETE", img(b), nil), nil)
	tg.step("unprotect", p1.patch(b, `[{"op":"replace","path":"/protected","value":false}]`), imageKeys)
	tg.step("delete b", p1.do("DELETE", img(b), nil), nil)
	tg.step("delete b again", p1.do("DELETE", img(b), nil), nil)
	tg.step("show deleted", p1.do("GET", img(b), nil), nil)
	tg.step("recreate deleted id", p1.do("POST", "/v2/images", `{"id":"`+b+`"}`), nil)
	tg.step("delete a", p1.do("DELETE", img(a), nil), nil)
	tg.step("download deleted", p1.do("GET", img(a)+"/file", nil), nil)
	tg.step("unknown path", p1.do("GET", "/v2/nothing", nil), nil)
	tg.step("versions", anon.do("GET", "/", nil), nil)
}

// TestSameAsGlance runs one request sequence against glimpse and against a real Glance Zed
// and compares status codes, error messages and the key fields of every answer.
func TestSameAsGlance(t *testing.T) {
	gURL := realGlance(t)
	_, srv := newServer(t, AuthHeaders{})
	ids := make([]string, 4)
	for i := range ids {
		ids[i] = newUUID()
	}
	var rb [4]byte
	rand.Read(rb[:])
	pr := fmt.Sprintf("proj%x-", rb)
	data := randomBytes(t, 100<<10)
	ours := &target{t: t, base: srv.URL}
	theirs := &target{t: t, base: gURL}
	scenario(ours, ids, pr, data)
	scenario(theirs, ids, pr, data)
	if len(ours.out) != len(theirs.out) {
		t.Fatalf("%d steps against glimpse, %d against Glance", len(ours.out), len(theirs.out))
	}
	for i := range ours.out {
		o, g := ours.out[i], theirs.out[i]
		if o.code != g.code {
			t.Errorf("%s: status %d, Glance %d (%s)", o.step, o.code, g.code, g.message)
			continue
		}
		if o.message != g.message {
			t.Errorf("%s: message\n\t%q\nGlance\n\t%q", o.step, o.message, g.message)
		}
		if o.keys != g.keys {
			t.Errorf("%s:\n\t%s\nGlance\n\t%s", o.step, o.keys, g.keys)
		}
	}
	t.Logf("%d steps compared", len(ours.out))
}
