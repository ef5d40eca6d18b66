-- wrk script for bench/serve.sh: POST /v1/classify with one message per request, cycling
-- through a few SNIPS-like messages, and counting answers that are not 200.
local messages = {
  "add this song to my road trip playlist",
  "book a table for four at a sushi place tonight",
  "will it rain in boston tomorrow",
  "play some jazz by miles davis",
  "rate this book five out of six stars",
  "find the movie the lost city",
  "what films are showing at the cinema near me",
}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  i = i % #messages + 1
  return wrk.format(nil, nil, nil, '{"text": "' .. messages[i] .. '"}')
end
