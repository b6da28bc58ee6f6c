# Sourced by eval/run_*.sh on the GPU machine: the staged assets (the GGUF under $ROPESEARCH_CACHE,
# wheels installed into /root/assets/site, the books in /root/assets/books) where ropesearch finds them.
export PYTHONPATH=$PWD:/root/assets/site ROPESEARCH_CACHE=/root/assets/cache PYTHONUNBUFFERED=1
mkdir -p ../shared/data
[ -d ../shared/data/books ] || cp -r /root/assets/books ../shared/data/
