package api

import (
	"encoding/json"
	"net/http"
)

// Versions are the API versions Glance Zed lists, newest first; v2.15 is CURRENT.
var Versions = []string{"v2.15", "v2.9", "v2.7", "v2.6", "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0"}

type versionLink struct {
	Rel  string `json:"rel"`
	Href string `json:"href"`
}

type version struct {
	ID     string        `json:"id"`
	Status string        `json:"status"`
	Links  []versionLink `json:"links"`
}

// WriteVersions answers GET / and GET /versions as Glance does: 300 Multiple Choices with
// every version linking to base + "/v2/" (base is the URL callers reach this server at).
func WriteVersions(w http.ResponseWriter, base string) {
	out := struct {
		Versions []version `json:"versions"`
	}{}
	for i, id := range Versions {
		st := "SUPPORTED"
		if i == 0 {
			st = "CURRENT"
		}
		out.Versions = append(out.Versions, version{ID: id, Status: st, Links: []versionLink{{Rel: "self", Href: base + "/v2/"}}})
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusMultipleChoices)
	w.Write(b)
}

// BaseURL is the scheme and host a request was made to, as the version document links it.
func BaseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "http" || p == "https" {
		scheme = p
	}
	return scheme + "://" + r.Host
}
