package api

// Paging of list endpoints (GET /v1/episodes): the body stays a JSON array,
// so clients written before paging still parse it; a page that is not the
// last carries the cursor of the next one in NextCursorHeader and a
// Link: <...>; rel="next" header. Without ?limit= a list returns at most
// DefaultPageLimit items; clients that want everything follow the cursor.
const (
	NextCursorHeader = "X-Next-Cursor"
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)
