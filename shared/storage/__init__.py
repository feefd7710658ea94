"""The Azure Storage adapter: queue clients, the terminate/confirm/incident queues, poison records, incidents."""
