package store

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
)

// Caller is who makes a request: a project (Glance's owner of what it creates), a user, and
// roles. Admin callers see and may change everything.
type Caller struct {
	Project string
	User    string
	Roles   []string
	Admin   bool
}

// Authenticator says who a request comes from, or false when it must be answered 401.
type Authenticator interface {
	Authenticate(r *http.Request) (Caller, bool)
}

// AuthNone makes every caller an admin of no project, as Glance's noauth pipeline does:
// images it creates have no owner. For a single user on one machine.
type AuthNone struct{}

// Authenticate always succeeds.
func (AuthNone) Authenticate(*http.Request) (Caller, bool) {
	return Caller{Admin: true, Roles: []string{"admin"}}, true
}

// AuthHeaders trusts the identity headers keystonemiddleware sets in front of Glance:
// X-Identity-Status: Confirmed, X-Project-Id (or X-Tenant-Id), X-User-Id, X-Roles. Use it
// only behind a front that sets these headers itself and strips them from clients.
type AuthHeaders struct{}

// Authenticate reads the identity headers; a request without X-Identity-Status: Confirmed
// is refused.
func (AuthHeaders) Authenticate(r *http.Request) (Caller, bool) {
	if !strings.EqualFold(r.Header.Get("X-Identity-Status"), "Confirmed") {
		return Caller{}, false
	}
	c := Caller{
		Project: r.Header.Get("X-Project-Id"),
		User:    r.Header.Get("X-User-Id"),
		Roles:   splitRoles(r.Header.Get("X-Roles")),
	}
	if c.Project == "" {
		c.Project = r.Header.Get("X-Tenant-Id")
	}
	if c.User == "" {
		c.User = r.Header.Get("X-User")
	}
	c.Admin = hasAdmin(c.Roles)
	return c, true
}

func splitRoles(s string) []string {
	var out []string
	for _, r := range strings.Split(s, ",") {
		if r = strings.TrimSpace(r); r != "" {
			out = append(out, r)
		}
	}
	return out
}

func hasAdmin(roles []string) bool {
	return slices.ContainsFunc(roles, func(r string) bool { return strings.EqualFold(r, "admin") })
}

// TokenEntry is what a token stands for in a token file.
type TokenEntry struct {
	Project string   `json:"project"`
	User    string   `json:"user"`
	Roles   []string `json:"roles"`
}

// AuthTokens maps X-Auth-Token values to callers, for a standalone deployment without
// Keystone. An unknown or missing token is refused.
type AuthTokens struct {
	tokens map[string]TokenEntry
}

// LoadTokenFile reads a token file: a JSON object from token to {"project", "user",
// "roles"}, for example
//
//	{
//	  "s3cret-admin": {"project": "ops", "user": "alice", "roles": ["admin"]},
//	  "s3cret-ci":    {"project": "ci", "user": "ci-bot", "roles": ["member"]}
//	}
//
// Every entry needs a project. The file holds secrets: keep it readable by glimpse only.
func LoadTokenFile(path string) (*AuthTokens, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]TokenEntry
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: not a token file (a JSON object from token to {\"project\", \"user\", \"roles\"}): %w", path, err)
	}
	return NewAuthTokens(m, path)
}

// NewAuthTokens builds the authenticator from a map (src names it in errors).
func NewAuthTokens(m map[string]TokenEntry, src string) (*AuthTokens, error) {
	if len(m) == 0 {
		return nil, fmt.Errorf("%s: no tokens", src)
	}
	for tok, e := range m {
		if tok == "" {
			return nil, fmt.Errorf("%s: an empty token", src)
		}
		if e.Project == "" {
			return nil, fmt.Errorf("%s: token %.4s…: no project", src, tok)
		}
	}
	return &AuthTokens{tokens: m}, nil
}

// Authenticate looks the X-Auth-Token up.
func (a *AuthTokens) Authenticate(r *http.Request) (Caller, bool) {
	tok := r.Header.Get("X-Auth-Token")
	e, ok := a.tokens[tok]
	if tok == "" || !ok {
		return Caller{}, false
	}
	return Caller{Project: e.Project, User: e.User, Roles: e.Roles, Admin: hasAdmin(e.Roles)}, true
}
