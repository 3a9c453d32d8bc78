#!/usr/bin/env bash
# A Shoal exec function: Shoal runs this script once per invocation, with
# the request body on stdin and the request in the environment (CGI-like):
# SHOAL_METHOD, SHOAL_PATH, SHOAL_QUERY and one HTTP_<NAME> per header.
# Exit 0: stdout is the 200 answer. Exit non-zero: the caller gets a 500
# function_failed carrying the end of stderr.
#
# Run it by hand:
#   echo 'some body' | SHOAL_METHOD=POST SHOAL_QUERY='name=Ada' HTTP_USER_AGENT=me bash handler.sh
set -euo pipefail

query="${SHOAL_QUERY:-}"

# ?fail=1 shows the error path.
case "&${query}&" in
*"&fail=1&"*)
	echo "handler.sh: failing on purpose (the query asked for fail=1)" >&2
	exit 1
	;;
esac

# The name comes from ?name=..., taken as it is (not URL-decoded).
name=world
IFS='&' read -ra pairs <<<"$query"
for pair in "${pairs[@]}"; do
	case "$pair" in
	name=?*) name="${pair#name=}" ;;
	esac
done

echo "Hello, ${name}, from bash!"
echo "method: ${SHOAL_METHOD:-GET}"
echo "path: ${SHOAL_PATH:-/}"
echo "query: ${query}"
echo "headers:"
env | grep '^HTTP_' | sort | sed 's/^/  /' || true
echo "body:"
cat
