package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"glimpse/api"
)

// Paging limits, Glance's defaults (limit_param_default, api_limit_max).
const (
	defaultLimit = 25
	maxLimit     = 1000
)

// sortKeys are the keys Glance Zed sorts by, in the order its error message lists them.
var sortKeys = []string{"name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at"}

// listParams are the query parameters that are not filters on a property.
var listParams = map[string]bool{
	"limit": true, "marker": true, "sort_key": true, "sort_dir": true, "sort": true,
	"member_status": true, "visibility": true, "size_min": true, "size_max": true, "tag": true,
	"os_hidden": true, "protected": true,
}

// filterColumns are the image columns a query parameter filters on by equality (or with
// the in: operator).
var filterColumns = map[string]bool{
	"name": true, "status": true, "owner": true, "disk_format": true, "container_format": true,
	"id": true, "checksum": true, "os_hash_value": true, "min_ram": true, "min_disk": true,
}

type sortSpec struct{ key, dir string }

// query is a SQL condition being built.
type query struct {
	where []string
	args  []any
}

func (q *query) add(cond string, args ...any) {
	q.where = append(q.where, cond)
	q.args = append(q.args, args...)
}

func (q *query) sql() string {
	if len(q.where) == 0 {
		return "1"
	}
	return strings.Join(q.where, " AND ")
}

func badRequest(format string, args ...any) *api.APIError {
	return api.Errorf(http.StatusBadRequest, format, args...)
}

func (s *Store) listImages(w http.ResponseWriter, r *http.Request, c Caller) error {
	ctx := r.Context()
	rawQuery := r.URL.RawQuery
	params, err := url.ParseQuery(rawQuery)
	if err != nil {
		return badRequest("Invalid query string.")
	}
	last := func(k string) (string, bool) {
		v := params[k]
		if len(v) == 0 {
			return "", false
		}
		return v[len(v)-1], true
	}

	limit := defaultLimit
	if v, ok := last("limit"); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return badRequest("limit param must be an integer")
		}
		if n < 0 {
			return badRequest("limit param must be positive")
		}
		limit = min(n, maxLimit)
	}
	sorts, aerr := parseSort(params)
	if aerr != nil {
		return aerr
	}

	var q query
	// Who sees what (Glance's _select_images_query).
	visibility, hasVis := last("visibility")
	if hasVis && visibility != "all" && !slices.Contains(visibilities, visibility) {
		return badRequest("Invalid visibility value: %s", visibility)
	}
	memberStatus := "accepted"
	if v, ok := last("member_status"); ok {
		if !slices.Contains([]string{"pending", "accepted", "rejected", "all"}, v) {
			return badRequest("Invalid status: %s", v)
		}
		memberStatus = v
	}
	if !c.Admin {
		var or []string
		var args []any
		if c.Project != "" {
			or = append(or, "owner = ?")
			args = append(args, c.Project)
			m := "visibility = 'shared' AND EXISTS (SELECT 1 FROM members m WHERE m.image_id = images.id AND m.member = ?"
			args = append(args, c.Project)
			if memberStatus != "all" {
				m += " AND m.status = ?"
				args = append(args, memberStatus)
			}
			or = append(or, m+")")
		}
		or = append(or, "visibility = 'public'")
		if visibility == "community" || visibility == "all" {
			or = append(or, "visibility = 'community'")
		}
		q.add("("+strings.Join(or, " OR ")+")", args...)
	}
	switch {
	case !hasVis:
		// Community images are listed only when asked for, or to their owner.
		if c.Project != "" {
			q.add("(visibility <> 'community' OR owner = ?)", c.Project)
		} else {
			q.add("visibility <> 'community'")
		}
	case visibility != "all":
		q.add("visibility = ?", visibility)
	}

	hidden := "false"
	if v, ok := last("os_hidden"); ok {
		if v != "true" && v != "false" {
			return badRequest("Invalid value '%s' for 'os_hidden' filter. Valid values are 'true' or 'false'.", v)
		}
		hidden = v
	}
	q.add("os_hidden = ?", hidden == "true")
	if v, ok := last("protected"); ok {
		if v != "true" && v != "false" {
			return badRequest("Invalid value '%s' for 'protected' filter. Valid values are 'true' or 'false'.", v)
		}
		q.add("protected = ?", v == "true")
	}
	for _, k := range []string{"size_min", "size_max"} {
		v, ok := last(k)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return badRequest("Unable to filter on a range with a non-numeric value.")
		}
		if k == "size_min" {
			q.add("size >= ?", n)
		} else {
			q.add("size <= ?", n)
		}
	}
	for _, t := range params["tag"] {
		q.add("EXISTS (SELECT 1 FROM tags t WHERE t.image_id = images.id AND t.tag = ?)", t)
	}
	for k, vs := range params {
		if listParams[k] {
			continue
		}
		v := vs[len(vs)-1]
		switch {
		case k == "created_at" || k == "updated_at" || k == "changes-since":
			col := k
			if k == "changes-since" {
				col, v = "updated_at", "gte:"+v
			}
			if e := timeFilter(&q, col, v); e != nil {
				return e
			}
		case filterColumns[k]:
			if vals, ok := inOperator(v); ok {
				q.add(k+" IN ("+placeholders(len(vals))+")", toAny(vals)...)
			} else if k == "min_ram" || k == "min_disk" {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return badRequest("Invalid value '%s' for '%s' filter.", v, k)
				}
				q.add(k+" = ?", n)
			} else {
				q.add(k+" = ?", v)
			}
		default:
			q.add("EXISTS (SELECT 1 FROM properties p WHERE p.image_id = images.id AND p.name = ? AND p.value = ?)", k, v)
		}
	}

	// The marker: an image the caller may see; the page starts after it in sort order.
	if marker, ok := last("marker"); ok {
		m, err := s.lookup(ctx, s.r, c, marker)
		if errors.Is(err, errNoImage) {
			return badRequest("No image found with ID %s", marker)
		}
		if err != nil {
			return err
		}
		cond, args := afterMarker(sorts, m)
		q.add(cond, args...)
	}

	order := make([]string, len(sorts))
	for i, sp := range sorts {
		order[i] = sp.key + " " + strings.ToUpper(sp.dir)
	}
	stmt := "SELECT " + imageColumns + " FROM images WHERE " + q.sql() + " ORDER BY " + strings.Join(order, ", ") + " LIMIT ?"
	recs, err := s.queryRecords(ctx, stmt, append(q.args, limit)...)
	if err != nil {
		return err
	}
	out := struct {
		Images []api.Image `json:"images"`
		First  string      `json:"first"`
		Schema string      `json:"schema"`
		Next   string      `json:"next,omitempty"`
	}{Images: make([]api.Image, len(recs)), Schema: "/v2/schemas/images"}
	for i, rec := range recs {
		out.Images[i] = rec.toAPI()
	}
	base := pagingQuery(rawQuery)
	out.First = "/v2/images"
	if base != "" {
		out.First += "?" + base
	}
	if len(recs) > 0 && len(recs) == limit {
		next := "marker=" + url.QueryEscape(recs[len(recs)-1].ID)
		if base != "" {
			next = base + "&" + next
		}
		out.Next = "/v2/images?" + next
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Store) queryRecords(ctx context.Context, stmt string, args ...any) ([]*record, error) {
	rows, err := s.r.QueryContext(ctx, stmt, args...)
	if err != nil {
		return nil, err
	}
	var recs []*record
	for rows.Next() {
		rec, err := scanRecord(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		recs = append(recs, rec)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if err := loadExtras(ctx, s.r, recs); err != nil {
		return nil, err
	}
	return recs, nil
}

// parseSort reads sort_key/sort_dir (old syntax, repeatable) or sort=key:dir,... (new) and
// appends Glance's tie-breakers, created_at and id, descending.
func parseSort(params url.Values) ([]sortSpec, *api.APIError) {
	var specs []sortSpec
	checkKey := func(k string) *api.APIError {
		if !slices.Contains(sortKeys, k) {
			return badRequest("Invalid sort key: %s. It must be one of the following: %s.", k, strings.Join(sortKeys, ", "))
		}
		return nil
	}
	checkDir := func(d string) *api.APIError {
		if d != "asc" && d != "desc" {
			return badRequest("Invalid sort direction: %s", d)
		}
		return nil
	}
	if newSyntax, ok := params["sort"]; ok {
		if _, old := params["sort_key"]; old {
			return nil, badRequest("Old and new sorting syntax cannot be combined")
		}
		if _, old := params["sort_dir"]; old {
			return nil, badRequest("Old and new sorting syntax cannot be combined")
		}
		for _, part := range strings.Split(newSyntax[len(newSyntax)-1], ",") {
			k, d, hasDir := strings.Cut(strings.TrimSpace(part), ":")
			k = strings.TrimSpace(k)
			if !hasDir {
				d = "desc"
			}
			d = strings.TrimSpace(d)
			if e := checkKey(k); e != nil {
				return nil, e
			}
			if e := checkDir(d); e != nil {
				return nil, e
			}
			specs = append(specs, sortSpec{k, d})
		}
	} else {
		keys, dirs := params["sort_key"], params["sort_dir"]
		for _, d := range dirs {
			if e := checkDir(d); e != nil {
				return nil, e
			}
		}
		for _, k := range keys {
			if e := checkKey(k); e != nil {
				return nil, e
			}
		}
		switch {
		case len(dirs) > 1 && len(dirs) != len(keys):
			return nil, badRequest("Number of sort dirs does not match the number of sort keys")
		case len(keys) == 0 && len(dirs) == 1:
			keys = []string{"created_at"}
		}
		for i, k := range keys {
			d := "desc"
			if len(dirs) == 1 {
				d = dirs[0]
			} else if len(dirs) > 1 {
				d = dirs[i]
			}
			specs = append(specs, sortSpec{k, d})
		}
	}
	has := func(k string) bool {
		return slices.ContainsFunc(specs, func(sp sortSpec) bool { return sp.key == k })
	}
	if !has("created_at") {
		specs = append(specs, sortSpec{"created_at", "desc"})
	}
	if !has("id") {
		specs = append(specs, sortSpec{"id", "desc"})
	}
	return specs, nil
}

// afterMarker is the condition "comes after marker m in this order", lexicographic over
// the sort keys, with SQLite's order of NULLs (first ascending, last descending).
func afterMarker(sorts []sortSpec, m *record) (string, []any) {
	var or []string
	var args []any
	var eq []string
	var eqArgs []any
	for _, sp := range sorts {
		val := markerValue(m, sp.key)
		var after string
		var afterArgs []any
		switch {
		case val == nil && sp.dir == "asc":
			after = sp.key + " IS NOT NULL"
		case val == nil:
			after = "0" // nothing sorts after NULL descending
		case sp.dir == "asc":
			after, afterArgs = sp.key+" > ?", []any{val}
		default:
			after, afterArgs = "("+sp.key+" < ? OR "+sp.key+" IS NULL)", []any{val}
		}
		term := append(append([]string{}, eq...), after)
		or = append(or, "("+strings.Join(term, " AND ")+")")
		args = append(append(args, eqArgs...), afterArgs...)
		if val == nil {
			eq = append(eq, sp.key+" IS NULL")
		} else {
			eq = append(eq, sp.key+" = ?")
			eqArgs = append(eqArgs, val)
		}
	}
	return "(" + strings.Join(or, " OR ") + ")", args
}

func markerValue(m *record, key string) any {
	var v any
	switch key {
	case "name":
		v = nullStr(m.Name)
	case "status":
		return m.Status
	case "container_format":
		v = nullStr(m.ContainerFormat)
	case "disk_format":
		v = nullStr(m.DiskFormat)
	case "size":
		if m.Size.Valid {
			return m.Size.Int64
		}
		return nil
	case "id":
		return m.ID
	case "created_at":
		return m.CreatedAt
	case "updated_at":
		return m.UpdatedAt
	}
	if p, ok := v.(*string); ok && p != nil {
		return *p
	}
	return nil
}

// inOperator parses Glance's "in:a,b,c" (values may be double-quoted to hold commas).
func inOperator(v string) ([]string, bool) {
	rest, ok := strings.CutPrefix(v, "in:")
	if !ok {
		return nil, false
	}
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range rest {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ',' && !quoted:
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	return append(out, cur.String()), true
}

// timeFilter applies created_at/updated_at filters: "op:timestamp" with op one of gt, gte,
// lt, lte, eq, neq (eq when absent).
func timeFilter(q *query, col, v string) *api.APIError {
	ops := map[string]string{"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "=", "neq": "<>"}
	op, val := "eq", v
	if o, rest, ok := strings.Cut(v, ":"); ok {
		if _, known := ops[o]; known {
			op, val = o, rest
		}
	}
	var t time.Time
	var err error
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err = time.Parse(layout, val); err == nil {
			break
		}
	}
	if err != nil {
		return badRequest("Unable to parse datetime string '%s'", val)
	}
	q.add(col+" "+ops[op]+" ?", t.UTC().Format("2006-01-02T15:04:05Z"))
	return nil
}

func placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?,", n), ",") }

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// pagingQuery is the query string of the "first" and "next" links: the request's
// parameters without the marker, one value per name (the last), in the order names first
// appeared, as Glance writes them.
func pagingQuery(raw string) string {
	type kv struct{ k, v string }
	var order []string
	vals := map[string]string{}
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		k, err1 := url.QueryUnescape(k)
		v, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil || k == "marker" {
			continue
		}
		if _, seen := vals[k]; !seen {
			order = append(order, k)
		}
		vals[k] = v
	}
	parts := make([]string, len(order))
	for i, k := range order {
		parts[i] = url.QueryEscape(k) + "=" + url.QueryEscape(vals[k])
	}
	return strings.Join(parts, "&")
}

var _ = fmt.Sprint
var _ sql.NullString
