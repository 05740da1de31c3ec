"""`animate4d serve`: the job store, the queue and the router between clients and workers.

Never imports torch: a worker's crash cannot take the server down.
"""
